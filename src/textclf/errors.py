"""The one exception type a user should see (a problem they can fix, said in one line), and
the runner every command-line entry point reports it through."""

from __future__ import annotations

import sys
from collections.abc import Callable


class TextclfError(Exception):
    """A bad input (config value, archive, URL, missing file) reported as one actionable line.

    Entry points run under ``run_cli``, which prints ``error: [<name>] <message>`` to stderr
    and exits with status 1; anything else is a bug and keeps its traceback.
    """


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (MLflow's and SQLAlchemy's run to pages), else
    the name of its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def describe_composition_error(error: Exception) -> str:
    """Hydra's multi-line "Could not find 'model/nope' ... Available options ..." as one line."""
    text = str(error).split("Config search path:")[0]
    head, _, options = text.partition("Available options in")
    line = " ".join(head.split())
    if options:
        group, _, names = options.partition(":")
        line += f"; available options in {group.strip()}: {', '.join(names.split())}"
    return line


def run_cli(
    name: str | None,
    command: Callable[[], object],
    interrupted: str = "interrupted",
    hydra: bool = False,
) -> None:
    """Runs ``command``: a TextclfError becomes ``error: [name] <message>`` (``error:
    <message>`` without a name) and exit status 1, Ctrl-C ``error: [name] <interrupted>`` and
    status 130. With ``hydra``, a config that does not compose (an unknown group option, a bad
    override) is one such line too (``describe_composition_error``). Third-party output is
    quieted first (textclf.logs), as every entry point wants."""
    from textclf.logs import quiet

    quiet()
    prefix = f"error: [{name}] " if name else "error: "
    composition: tuple[type[BaseException], ...] = ()
    if hydra:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        composition = (HydraException, OmegaConfBaseException)
    try:
        command()
    except TextclfError as error:
        _exit(prefix + str(error), 1)
    except KeyboardInterrupt:
        _exit(prefix + interrupted, 130)
    except composition as error:
        _exit(prefix + describe_composition_error(error), 1)


def _exit(line: str, status: int) -> None:
    print(line, file=sys.stderr)
    sys.exit(status)
