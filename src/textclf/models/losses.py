"""The training loss a config chooses (``train.loss``), over logits (B, C) and labels (B,).

``cross_entropy``: softmax cross-entropy, with ``train.label_smoothing`` and class weights.
``squared_hinge``: one-vs-rest squared hinge, the loss of scikit-learn's LinearSVC: each class
is a binary problem with target +1 for the document's class and -1 for the others, and a
document costs sum_c max(0, 1 - y_c z_c)^2. With L2 weight decay on a linear model it is the
linear SVM; over sparse TF-IDF features it separates rare n-grams with a margin where
cross-entropy keeps pushing their weights up.
"""

from __future__ import annotations

import torch
from torch import nn

from textclf.config import LossName


class SquaredHingeLoss(nn.Module):
    """One-vs-rest squared hinge, averaged over documents as CrossEntropyLoss averages: with
    class weights, each document weighs its class's weight and the mean divides by their sum."""

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)  # (C,) or None, stored as CrossEntropyLoss stores it

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() == 2:  # (B, C) multi-hot: each label its own binary problem
            signs = labels.to(logits.dtype) * 2 - 1  # (B, C): +1 for the document's labels
            terms = (1 - signs * logits).clamp(min=0).square()  # (B, C)
            if self.weight is not None:  # a multi-label model's class weights weigh positives (pos_weight)
                terms = terms * torch.where(labels.bool(), self.weight.to(terms.dtype), 1.0)
            return terms.sum(dim=1).mean()
        signs = torch.full_like(logits, -1.0)  # (B, C): -1 everywhere but the document's class
        signs.scatter_(1, labels.unsqueeze(1), 1.0)
        per_document = (1 - signs * logits).clamp(min=0).square().sum(dim=1)  # (B,)
        if self.weight is None:
            return per_document.mean()
        weights = self.weight[labels].to(per_document.dtype)  # (B,)
        return (per_document * weights).sum() / weights.sum()


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy with logits, averaged over every (text, label) pair: logits (B, C),
    targets (B, C) 0/1. ``label_smoothing`` s moves each target s/2 towards the other class (1 ->
    1 - s/2, 0 -> s/2: the binary form of cross-entropy's smoothing over two classes);
    ``pos_weight`` (C,) weighs each label's positive term (train.class_weights=balanced: its
    negatives / positives in the training split, as BCEWithLogitsLoss documents)."""

    def __init__(self, label_smoothing: float = 0.0, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        smoothed = targets.to(logits.dtype) * (1.0 - self.label_smoothing) + self.label_smoothing / 2
        return nn.functional.binary_cross_entropy_with_logits(logits, smoothed, pos_weight=self.pos_weight)


def build_criterion(
    loss: LossName, weight: torch.Tensor | None, label_smoothing: float, multi_label: bool = False
) -> nn.Module:
    """The module that scores logits against labels (B,), or multi-hot targets (B, C) when
    ``multi_label``: cross-entropy becomes binary cross-entropy per label, and the squared hinge
    takes each label's own +1/-1 target. Label smoothing is cross-entropy's only (config
    validation refuses it with squared_hinge)."""
    if loss == "squared_hinge":
        return SquaredHingeLoss(weight)
    if multi_label:
        return MultiLabelLoss(label_smoothing, pos_weight=weight)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
