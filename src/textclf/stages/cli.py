"""What every stage entry point shares: one clear line and a non-zero exit for bad input."""

from __future__ import annotations

import sys
from typing import Callable

from textclf.errors import TextclfError
from textclf.logs import quiet


def run_stage(name: str, stage: Callable[[], object]) -> None:
    """Runs ``stage``; a TextclfError becomes ``error: [name] <message>`` and exit status 1."""
    quiet()  # third-party noise (textclf.logs)
    try:
        stage()
    except TextclfError as error:
        print(f"error: [{name}] {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"error: [{name}] interrupted", file=sys.stderr)
        sys.exit(130)
