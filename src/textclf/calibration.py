"""Calibrated probabilities: a temperature fitted on the validation split, and how well it works.

A classifier trained with cross-entropy is overconfident (its softmax says 0.99 where it is
right 90% of the time). Temperature scaling (Guo et al., 2017) divides every logit by one
positive number T before the softmax: the predicted class never changes (accuracy and F1 are
untouched) and T > 1 spreads the probabilities out. T minimises the negative log-likelihood of
the validation split, so the choice never sees the test split, which only measures it.

Where it is fitted: the evaluate stage (textclf.stages.evaluate), not the end of train.
Evaluate already loads the best checkpoint and the data module, and it is the stage that ships
the model: the temperature goes into the logged model (``calibration.json``, see
textclf.serving) and into reports/metrics.json. Train's outputs stay as they are (bitwise
reproducible, resumable, the same under DDP: nothing more to keep rank-synchronised), and
``calibration.method`` is a param of evaluate alone, so changing it reruns evaluate, never a
training. The price: the DVC output models/model.ckpt holds the uncalibrated classifier; its
temperature is reports/metrics.json's ``temperature``.

The measure is the expected calibration error (ECE, ``ECE_BINS`` equal-width bins of the top
probability, l1): torchmetrics' MulticlassCalibrationError. ``reliability_bins`` gives the
same bins as rows for the reliability diagram (textclf.plots.reliability, and DVC's plot).

A multi-label model (labels (N, C) 0/1: one sigmoid per label) is calibrated alike: T divides
its logits before the sigmoid and minimises the validation split's binary cross-entropy (the
labels predicted at a threshold change with T, which is why evaluate tunes the thresholds on
the calibrated probabilities: textclf.thresholds). Its ECE and bins treat every (text, label)
pair as one binary prediction: each bin's mean probability against how often the label is
there (torchmetrics' BinaryCalibrationError over the pairs).
"""

from __future__ import annotations

import csv
import io
import math

import torch
from torch.nn import functional as F

ECE_BINS = 15
# The search interval of T: beyond it the softmax is (numerically) one-hot or uniform anyway.
TEMPERATURE_BOUNDS = (0.01, 100.0)
LOG_T_TOLERANCE = 1e-7  # the golden-section search stops when log T is known to this width
RELIABILITY_COLUMNS = ("lower", "upper", "count", "confidence", "accuracy")
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` (N,) under softmax(``logits`` (N, C) / T),
    in float64 (no label smoothing: the likelihood the probabilities are judged by); of
    multi-label ``labels`` (N, C) 0/1 under sigmoid(logits / T), per (text, label) pair."""
    if labels.ndim == 2:
        return float(F.binary_cross_entropy_with_logits(logits.double() / temperature, labels.double()))
    return float(F.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """-> the T in TEMPERATURE_BOUNDS minimising nll(logits, labels, T): the validation split's.

    A golden-section search on log T. The NLL is convex in 1/T (a log-sum-exp of linear
    functions minus a linear one), so it has one minimum along log T and the bounded search
    finds it without a learning rate or a starting point, and, on the CPU in float64, gives the
    same T for the same logits every time. (N, C) logits cost about 40 evaluations."""
    expected = logits.shape if labels.ndim == 2 else logits.shape[:1]  # multi-label: (N, C) labels
    if logits.ndim != 2 or labels.shape != expected or labels.numel() == 0:
        raise ValueError(
            f"expected logits (N, C) and labels (N,) with N > 0, got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    logits = logits.detach().to("cpu", torch.float64)
    labels = labels.detach().to("cpu")

    def loss(log_t: float) -> float:
        return nll(logits, labels, math.exp(log_t))

    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    inner_low, inner_high = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    loss_low, loss_high = loss(inner_low), loss(inner_high)
    while high - low > LOG_T_TOLERANCE:
        if loss_low <= loss_high:  # the minimum lies left of inner_high
            high, inner_high, loss_high = inner_high, inner_low, loss_low
            inner_low = high - _GOLDEN * (high - low)
            loss_low = loss(inner_low)
        else:
            low, inner_low, loss_low = inner_low, inner_high, loss_high
            inner_high = low + _GOLDEN * (high - low)
            loss_high = loss(inner_high)
    return math.exp((low + high) / 2)


def calibrated(logits: torch.Tensor, temperature: float, multi_label: bool = False) -> torch.Tensor:
    """(N, C) logits -> (N, C) probabilities softmax(logits / T), rows summing to one (a
    multi-label model's: sigmoid(logits / T), one per label). The shipped model
    (textclf.serving) computes exactly this on its float32 logits."""
    if multi_label:
        return (logits / temperature).sigmoid()
    return (logits / temperature).softmax(dim=1)


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """(N, C) probabilities, (N,) labels -> top-label ECE over ECE_BINS bins (l1); (N, C)
    multi-label labels -> the ECE of every (text, label) pair as a binary prediction."""
    from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

    if labels.ndim == 2:
        binary = BinaryCalibrationError(n_bins=ECE_BINS, norm="l1")
        return float(binary(probabilities.reshape(-1), labels.reshape(-1).long()))

    metric = MulticlassCalibrationError(probabilities.shape[1], n_bins=ECE_BINS, norm="l1")
    return float(metric(probabilities, labels))


def reliability_bins(probabilities: torch.Tensor, labels: torch.Tensor) -> list[dict[str, float]]:
    """-> one row per non-empty bin of the top probability: lower, upper, count, confidence
    (the bin's mean top probability), accuracy (how often the top class is right).

    The bins are torchmetrics': [i/15, (i+1)/15) for i < 15, and a last one for a top
    probability of exactly 1.0 (lower = upper = 1), so that sum(count / N * |accuracy -
    confidence|) is expected_calibration_error."""
    if labels.ndim == 2:  # multi-label: every (text, label) pair, its probability and whether it is there
        confidences, correct = probabilities.float().reshape(-1), labels.reshape(-1).float()
    else:
        confidences, predicted = probabilities.float().max(dim=1)  # (N,), as torchmetrics takes them
        correct = predicted.eq(labels).float()
    boundaries = torch.linspace(0, 1, ECE_BINS + 1, dtype=confidences.dtype)
    index = torch.bucketize(confidences, boundaries, right=True) - 1  # (N,) in 0..ECE_BINS
    rows = []
    for i in range(ECE_BINS + 1):
        members = index == i
        count = int(members.sum())
        if count:
            upper = boundaries[i + 1] if i < ECE_BINS else boundaries[i]
            rows.append(
                {
                    "lower": round(float(boundaries[i]), 6),
                    "upper": round(float(upper), 6),
                    "count": count,
                    "confidence": float(confidences[members].mean()),
                    "accuracy": float(correct[members].mean()),
                }
            )
    return rows


def reliability_csv(rows: list[dict[str, float]]) -> str:
    """reliability_bins' rows -> CSV text with RELIABILITY_COLUMNS (DVC's plot: x confidence,
    y accuracy; a calibrated model's points lie on the diagonal)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=RELIABILITY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(
        {**row, "confidence": round(row["confidence"], 6), "accuracy": round(row["accuracy"], 6)} for row in rows
    )
    return text.getvalue()
