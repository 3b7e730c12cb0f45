"""``run_stage``, the name the train and evaluate stages still import: textclf.errors.run_cli."""

from textclf.errors import run_cli as run_stage  # noqa: F401
