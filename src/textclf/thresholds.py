"""A multi-label model's decision thresholds, tuned on the validation split.

A multi-label model gives every label a probability (a sigmoid); a text gets each label whose
probability reaches the label's threshold. 0.5 is rarely the best cut: a rare label's
probabilities stay low, and label smoothing or class weights shift them all. ``train.threshold``
says what is tuned: ``global``, one threshold for every label, the one with the best micro-F1
over the validation split's (text, label) decisions; ``per_label``, each label's own, the one
with the best F1 of that label (a label without a validation document keeps the global one).

The candidates are THRESHOLDS (0.01 to 0.99 in steps of 0.01: the F1 of a few hundred
validation documents does not tell finer cuts apart); of several with the best F1 the one
nearest 0.5 is taken (the lower of two as near), so the choice is the same for the same
probabilities. Like the temperature (textclf.calibration), the thresholds are chosen by
evaluate, on the calibrated validation probabilities the shipped model computes, and shipped
with it (``thresholds.json``, see textclf.serving); the test split only measures them.
"""

from __future__ import annotations

import torch

THRESHOLDS = tuple(round(step / 100, 2) for step in range(1, 100))
HOW = ("global", "per_label")  # train.threshold


def _counts(probabilities: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (G, C) true positives and (G, C) false positives plus false negatives, per candidate
    threshold of THRESHOLDS and label."""
    truth = labels.bool()
    true_positives, errors = [], []
    for threshold in THRESHOLDS:  # one (N, C) comparison at a time: no (G, N, C) tensor
        predicted = probabilities >= threshold
        true_positives.append((predicted & truth).sum(dim=0))
        errors.append((predicted ^ truth).sum(dim=0))
    return torch.stack(true_positives).double(), torch.stack(errors).double()


def _best(f1: torch.Tensor) -> float:
    """(G,) F1 per candidate -> the candidate with the best F1 nearest 0.5."""
    candidates = torch.tensor(THRESHOLDS, dtype=torch.float64)
    best = torch.isclose(f1, f1.max(), rtol=0, atol=1e-12)
    distance = torch.where(best, (candidates - 0.5).abs(), torch.inf)
    return THRESHOLDS[int(torch.argmin(distance))]  # the first minimum: the lower of two as near


def tune_thresholds(probabilities: torch.Tensor, labels: torch.Tensor, how: str) -> list[float]:
    """(N, C) validation probabilities and (N, C) 0/1 labels -> (C,) thresholds: all the one
    with the best micro-F1 (``how`` "global"), or each label's with its best F1 ("per_label")."""
    if how not in HOW:
        raise ValueError(f"how: one of {HOW} (got {how!r})")
    true_positives, errors = _counts(probabilities, labels)
    micro = 2 * true_positives.sum(dim=1) / (2 * true_positives.sum(dim=1) + errors.sum(dim=1)).clamp(min=1)
    overall = _best(micro)
    if how == "global":
        return [overall] * probabilities.shape[1]
    per_label = 2 * true_positives / (2 * true_positives + errors).clamp(min=1)  # (G, C)
    present = labels.bool().any(dim=0)
    return [_best(per_label[:, c]) if bool(present[c]) else overall for c in range(probabilities.shape[1])]


def decide(probabilities: torch.Tensor, thresholds: list[float]) -> torch.Tensor:
    """(N, C) probabilities -> (N, C) bool: which labels each text gets (probability at or
    above the label's threshold). The shipped model decides exactly so."""
    return probabilities >= torch.tensor(thresholds, dtype=probabilities.dtype)
