"""What every stage entry point shares: one clear line and a non-zero exit for bad input."""

from __future__ import annotations

import sys
from typing import Callable

from textclf.errors import TextclfError


def run_stage(name: str, stage: Callable[[], object]) -> None:
    """Runs ``stage``; a TextclfError becomes ``error: [name] <message>`` and exit status 1."""
    try:
        stage()
    except TextclfError as error:
        print(f"error: [{name}] {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"error: [{name}] interrupted", file=sys.stderr)
        sys.exit(130)
