"""What is measured, under which names, and which measure picks the model.

Every metric is logged to MLflow as ``<split>/<name>``: ``train/loss_step`` and
``train/loss_epoch`` while training, ``val/loss``, ``val/accuracy`` and ``val/f1_macro`` after
every validation, and ``test/<key>`` for each key of reports/metrics.json but the temperature,
which the validation split chose: ``val/temperature`` (``logged_name``). ``train.monitor``
names the validation metric that selects the checkpoint (and that tune optimizes); its mode
(higher or lower is better) follows from the metric. training_curves.csv has one column per
epoch-level metric (CURVES); dvc.yaml's plots name those columns.

A multi-label model (several labels per text: textclf.data.labels) is scored under the same
names where they carry over, so compare, tune and the notebooks rank it alike: ``accuracy`` is
the subset accuracy (every label of a text right), ``f1_macro`` the macro-F1 over labels, each
at a decision threshold of 0.5 while training (evaluate scores the test split at the thresholds
tuned on validation: textclf.thresholds); ``val/f1_micro`` and the test scores of
MULTI_LABEL_TEST_SCORES are its own.

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
F1_MICRO = "f1_micro"  # multi-label: F1 over every (text, label) decision
PRECISION_MICRO, RECALL_MICRO = "precision_micro", "recall_micro"
HAMMING_LOSS = "hamming_loss"  # multi-label: the share of (text, label) decisions that are wrong
# Multi-label: labels per text, true and predicted (a model that predicts too few labels shows here).
CARDINALITY, CARDINALITY_PREDICTED = "label_cardinality", "label_cardinality_predicted"

TRAIN_PREFIX, VAL_PREFIX, TEST_PREFIX = "train/", "val/", "test/"
TRAIN_LOSS_STEP, TRAIN_LOSS_EPOCH = f"{TRAIN_PREFIX}loss_step", f"{TRAIN_PREFIX}loss_epoch"
VAL_LOSS, VAL_ACCURACY, VAL_F1_MACRO = (f"{VAL_PREFIX}{name}" for name in (LOSS, ACCURACY, F1_MACRO))
VAL_F1_MICRO, TEST_F1_MICRO = f"{VAL_PREFIX}{F1_MICRO}", f"{TEST_PREFIX}{F1_MICRO}"  # multi-label only
TEST_ACCURACY, TEST_F1_MACRO = f"{TEST_PREFIX}{ACCURACY}", f"{TEST_PREFIX}{F1_MACRO}"

# What train.monitor may name -> whether higher or lower is better. Validation metrics only:
# they are logged before the checkpoint callback and the pruner read them, every epoch.
MODES: dict[str, Literal["max", "min"]] = {
    VAL_F1_MACRO: "max",
    VAL_ACCURACY: "max",
    VAL_LOSS: "min",
    VAL_F1_MICRO: "max",
}
MonitorName = Literal[
    "val/f1_macro", "val/accuracy", "val/loss", "val/f1_micro"
]  # MODES' keys (a test keeps them equal)
MULTI_LABEL_MONITORS = (VAL_F1_MICRO,)  # logged for multi-label models only

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
# ... a multi-label model's (at the tuned thresholds), then its loss (BCE), cardinalities and count.
MULTI_LABEL_TEST_SCORES = (
    ACCURACY,
    F1_MICRO,
    F1_MACRO,
    PRECISION_MICRO,
    PRECISION_MACRO,
    RECALL_MICRO,
    RECALL_MACRO,
    HAMMING_LOSS,
)
# ... then calibration (textclf.calibration): the test split's expected calibration error
# before and after the temperature, its loss after, and the temperature, fitted on validation.
ECE_UNCALIBRATED, ECE_CALIBRATED = "ece_uncalibrated", "ece_calibrated"
LOSS_CALIBRATED, TEMPERATURE = "loss_calibrated", "temperature"
ECE = "ece"  # of probabilities as they are (an ensemble's: textclf.ensemble)
VAL_TEMPERATURE = f"{VAL_PREFIX}{TEMPERATURE}"
# A multi-label model's one threshold (train.threshold=global), tuned on validation: val/threshold.
THRESHOLD = "threshold"
CHOSEN_ON_VALIDATION = (TEMPERATURE, THRESHOLD)


def mode(monitor: str) -> Literal["max", "min"]:
    """ "max" if a higher ``monitor`` is better, "min" if lower is (a loss)."""
    return MODES[monitor]


def best(monitor: str, values: list[float]) -> float:
    """The best of ``values`` of ``monitor`` (by its mode)."""
    return max(values) if mode(monitor) == "max" else min(values)


def logged_name(key: str) -> str:
    """A key of reports/metrics.json -> its MLflow metric: ``test/<key>``, but the temperature
    and a multi-label model's threshold (chosen on the validation split) are ``val/<key>``."""
    return f"{VAL_PREFIX}{key}" if key in CHOSEN_ON_VALIDATION else f"{TEST_PREFIX}{key}"


def scores(num_classes: int) -> dict[str, Metric]:
    """The scores of every split with labels: accuracy (micro) and macro-F1."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    return {
        ACCURACY: MulticlassAccuracy(num_classes, average="micro"),
        F1_MACRO: MulticlassF1Score(num_classes, average="macro"),
    }


def multi_label_scores(num_labels: int) -> dict[str, Metric]:
    """A multi-label model's scores of every split with labels, at threshold 0.5 on the sigmoid
    of its logits: subset accuracy (``accuracy``), micro- and macro-F1 over the labels."""
    from torchmetrics.classification import MultilabelExactMatch, MultilabelF1Score

    return {
        ACCURACY: MultilabelExactMatch(num_labels),
        F1_MACRO: MultilabelF1Score(num_labels, average="macro"),
        F1_MICRO: MultilabelF1Score(num_labels, average="micro"),
    }


def val_metrics(num_classes: int, multi_label: bool = False) -> MetricCollection:
    """Logged after every validation as ``val/accuracy``, ``val/f1_macro`` (and a multi-label
    model's ``val/f1_micro``)."""
    from torchmetrics import MetricCollection

    return MetricCollection(multi_label_scores(num_classes) if multi_label else scores(num_classes), prefix=VAL_PREFIX)


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


def multi_label_evaluation_metrics(num_labels: int) -> MetricCollection:
    """What evaluate scores a multi-label model's test split with, on 0/1 predictions (the
    tuned thresholds applied; ``threshold=0.5`` then reads them as they are): the scores of
    MULTI_LABEL_TEST_SCORES and per label precision, recall and F1."""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import (
        MultilabelExactMatch,
        MultilabelF1Score,
        MultilabelHammingDistance,
        MultilabelPrecision,
        MultilabelRecall,
    )

    return MetricCollection(
        {
            ACCURACY: MultilabelExactMatch(num_labels),
            F1_MICRO: MultilabelF1Score(num_labels, average="micro"),
            F1_MACRO: MultilabelF1Score(num_labels, average="macro"),
            PRECISION_MICRO: MultilabelPrecision(num_labels, average="micro"),
            PRECISION_MACRO: MultilabelPrecision(num_labels, average="macro"),
            RECALL_MICRO: MultilabelRecall(num_labels, average="micro"),
            RECALL_MACRO: MultilabelRecall(num_labels, average="macro"),
            HAMMING_LOSS: MultilabelHammingDistance(num_labels, average="micro"),
            "precision": MultilabelPrecision(num_labels, average=None),
            "recall": MultilabelRecall(num_labels, average=None),
            "f1": MultilabelF1Score(num_labels, average=None),
        }
    )
