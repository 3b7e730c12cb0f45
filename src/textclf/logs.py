"""What third-party libraries print: progress, results and warnings that call for action, once.

``quiet()`` is called first by every entry point (the stage runner, which also runs predict
and compare, the Hydra app and tune); it is idempotent and changes no result, only output:

- Lightning's lines ("GPU available", "`Trainer.fit` stopped") once: the ``lightning`` package
  gives its logger a console handler of its own ("INFO: ..."), and in a Hydra job, whose root
  logger has a console handler and the job's log file, every line came out twice on the console.
  Lightning's lines no longer go on up to the root; in a Hydra job (``hand_lightning_to_root``,
  called at its start) they also go to the job's log file (DDP children's included), as before.
- Lightning's advertisement (a "Tip" to install litlogger, printed by every Trainer whose
  loggers are not a LitLogger; Lightning has no switch for it) and its "Loading
  `train_dataloader` to estimate number of stepping batches" are dropped.
- Lightning's own use of torch's deprecated ``LeafSpec`` (a FutureWarning for Lightning's
  developers; nothing a user can do) is not shown.
- MLflow logs at WARNING (``MLFLOW_LOGGING_LEVEL``; its INFO lines are "Creating initial
  MLflow database tables", "Validating input example against model signature") and draws no
  "Downloading artifacts" bar per artifact read from a local store
  (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``). Both only when the environment does not set them,
  so ``MLFLOW_LOGGING_LEVEL=INFO`` brings MLflow's lines back.
"""

from __future__ import annotations

import logging
import os
import warnings

# Lightning's INFO lines that tell a user nothing they can act on (matched at the start).
DROPPED_LIGHTNING_LINES = (
    "💡 Tip: For seamless cloud logging",
    "Loading `train_dataloader` to estimate number of stepping batches",
)
LIGHTNING_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"  # rank_zero_info's logger
MLFLOW_DEFAULTS = {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(DROPPED_LIGHTNING_LINES)


def quiet() -> None:
    for name, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)  # read by MLflow when it is imported or downloads
    # MLflow may already be imported (its logger then has the level it read at import).
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())
    logging.getLogger("lightning").propagate = False
    rank_zero = logging.getLogger(LIGHTNING_RANK_ZERO_LOGGER)
    if not any(isinstance(existing, _DropLines) for existing in rank_zero.filters):
        rank_zero.addFilter(_DropLines())
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )


def hand_lightning_to_root() -> None:
    """In a Hydra job: Lightning's lines also go to the job's log file (the root logger's file
    handlers, which Hydra set up), while the console keeps only Lightning's own handler."""
    lightning = logging.getLogger("lightning")
    lightning.propagate = False  # Hydra's console handler would print every line a second time
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and handler not in lightning.handlers:
            lightning.addHandler(handler)
