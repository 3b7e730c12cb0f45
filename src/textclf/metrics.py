"""What is measured, under which names, and which measure picks the model.

Every metric is logged to MLflow as ``<split>/<name>``: ``train/loss_step`` and
``train/loss_epoch`` while training, ``val/loss``, ``val/accuracy`` and ``val/f1_macro`` after
every validation, and ``test/<key>`` for each key of reports/metrics.json but the temperature,
which the validation split chose: ``val/temperature`` (``logged_name``). ``train.monitor``
names the validation metric that selects the checkpoint (and that tune optimizes); its mode
(higher or lower is better) follows from the metric. training_curves.csv has one column per
epoch-level metric (CURVES); dvc.yaml's plots name those columns.

The names cost no import: torchmetrics (seconds, cold) is imported only to build the metric
objects, so config validation, compare and tune read the names for free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torchmetrics import Metric, MetricCollection

ACCURACY, F1_MACRO = "accuracy", "f1_macro"  # scored on every split with labels
PRECISION_MACRO, RECALL_MACRO = "precision_macro", "recall_macro"  # test only
LOSS = "loss"

TRAIN_PREFIX, VAL_PREFIX, TEST_PREFIX = "train/", "val/", "test/"
TRAIN_LOSS_STEP, TRAIN_LOSS_EPOCH = f"{TRAIN_PREFIX}loss_step", f"{TRAIN_PREFIX}loss_epoch"
VAL_LOSS, VAL_ACCURACY, VAL_F1_MACRO = (f"{VAL_PREFIX}{name}" for name in (LOSS, ACCURACY, F1_MACRO))
TEST_ACCURACY, TEST_F1_MACRO = f"{TEST_PREFIX}{ACCURACY}", f"{TEST_PREFIX}{F1_MACRO}"

# What train.monitor may name -> whether higher or lower is better. Validation metrics only:
# they are logged before the checkpoint callback and the pruner read them, every epoch.
MODES: dict[str, Literal["max", "min"]] = {VAL_F1_MACRO: "max", VAL_ACCURACY: "max", VAL_LOSS: "min"}
MonitorName = Literal["val/f1_macro", "val/accuracy", "val/loss"]  # MODES' keys (a test keeps them equal)

# training_curves.csv: column -> the epoch-level metric it holds, after the epoch and step columns.
CURVES = {
    "train_loss": TRAIN_LOSS_EPOCH,
    "val_loss": VAL_LOSS,
    "val_accuracy": VAL_ACCURACY,
    "val_f1_macro": VAL_F1_MACRO,
}
CURVE_COLUMNS = ("epoch", "step", *CURVES)

# reports/metrics.json: these test scores, then the test loss and the number of test documents.
TEST_SCORES = (ACCURACY, F1_MACRO, PRECISION_MACRO, RECALL_MACRO)
# ... then calibration (textclf.calibration): the test split's expected calibration error
# before and after the temperature, its loss after, and the temperature, fitted on validation.
ECE_UNCALIBRATED, ECE_CALIBRATED = "ece_uncalibrated", "ece_calibrated"
LOSS_CALIBRATED, TEMPERATURE = "loss_calibrated", "temperature"
ECE = "ece"  # of probabilities as they are (an ensemble's: textclf.ensemble)
VAL_TEMPERATURE = f"{VAL_PREFIX}{TEMPERATURE}"


def mode(monitor: str) -> Literal["max", "min"]:
    """ "max" if a higher ``monitor`` is better, "min" if lower is (a loss)."""
    return MODES[monitor]


def best(monitor: str, values: list[float]) -> float:
    """The best of ``values`` of ``monitor`` (by its mode)."""
    return max(values) if mode(monitor) == "max" else min(values)


def logged_name(key: str) -> str:
    """A key of reports/metrics.json -> its MLflow metric: ``test/<key>``, but the temperature
    (chosen on the validation split) is ``val/temperature``."""
    return VAL_TEMPERATURE if key == TEMPERATURE else f"{TEST_PREFIX}{key}"


def scores(num_classes: int) -> dict[str, Metric]:
    """The scores of every split with labels: accuracy (micro) and macro-F1."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    return {
        ACCURACY: MulticlassAccuracy(num_classes, average="micro"),
        F1_MACRO: MulticlassF1Score(num_classes, average="macro"),
    }


def val_metrics(num_classes: int) -> MetricCollection:
    """Logged after every validation as ``val/accuracy``, ``val/f1_macro``."""
    from torchmetrics import MetricCollection

    return MetricCollection(scores(num_classes), prefix=VAL_PREFIX)


def evaluation_metrics(num_classes: int) -> MetricCollection:
    """What evaluate scores the test split with: TEST_SCORES, and per class precision, recall,
    F1 and the confusion matrix. (Not ``test_...``: pytest would collect it where imported.)"""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import (
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    return MetricCollection(
        {
            **scores(num_classes),
            PRECISION_MACRO: MulticlassPrecision(num_classes, average="macro"),
            RECALL_MACRO: MulticlassRecall(num_classes, average="macro"),
            "precision": MulticlassPrecision(num_classes, average=None),
            "recall": MulticlassRecall(num_classes, average=None),
            "f1": MulticlassF1Score(num_classes, average=None),
            "confusion": MulticlassConfusionMatrix(num_classes),
        }
    )
