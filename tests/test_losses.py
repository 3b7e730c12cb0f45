"""train.loss: the squared hinge is LinearSVC's one-vs-rest loss, and the config says which
settings belong to cross-entropy only."""

from __future__ import annotations

import pytest
import torch
from sklearn.svm import LinearSVC

from textclf.config import validate
from textclf.errors import TextclfError
from textclf.models.losses import SquaredHingeLoss, build_criterion
from textclf.params import compose

from conftest import REPO_ROOT


def test_the_squared_hinge_is_one_vs_rest_with_targets_plus_and_minus_one() -> None:
    logits = torch.tensor([[2.0, -0.5, 0.3], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    # Document 0: class 0 is past its margin (0), class 1 costs (1 - 0.5)^2, class 2 (1 + 0.3)^2;
    # document 1: every class sits on zero, one unit inside its margin.
    expected = torch.tensor([0.25 + 1.69, 3.0])
    assert SquaredHingeLoss()(logits, labels) == pytest.approx(float(expected.mean()))
    weighted = SquaredHingeLoss(torch.tensor([1.0, 1.0, 3.0]))(logits, labels)
    assert weighted == pytest.approx(float((expected[0] * 1 + expected[1] * 3) / 4))


def test_its_minimum_is_the_linear_svms_hinge_term_scikit_learn_minimizes() -> None:
    # LinearSVC(loss="squared_hinge") fits each class against the rest: at its solution the
    # gradient of 0.5 |w|^2 + C * sum of our per-document loss (same w, b) vanishes.
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(60, 4, generator=generator, dtype=torch.float64)
    labels = (features[:, 0] > 0.5).long() + (features[:, 1] > 0).long()  # three classes
    svm = LinearSVC(C=1.0, loss="squared_hinge", tol=1e-10, max_iter=100_000, intercept_scaling=1e4)
    svm.fit(features.numpy(), labels.numpy())
    weight = torch.tensor(svm.coef_, requires_grad=True)  # (C, F)
    bias = torch.tensor(svm.intercept_, requires_grad=True)
    loss = SquaredHingeLoss()(features @ weight.T + bias, labels) * len(labels)  # a sum, as C * sum
    objective = 0.5 * weight.square().sum() + loss
    objective.backward()
    assert weight.grad.abs().max() < 1e-3 and bias.grad.abs().max() < 1e-3


def test_cross_entropy_stays_the_default_and_takes_label_smoothing() -> None:
    cfg = validate(compose([], root=REPO_ROOT))
    assert cfg.train.loss == "cross_entropy"
    criterion = build_criterion("cross_entropy", None, 0.1)
    assert isinstance(criterion, torch.nn.CrossEntropyLoss) and criterion.label_smoothing == 0.1


def test_label_smoothing_with_the_squared_hinge_is_refused_in_one_line() -> None:
    with pytest.raises(TextclfError, match=r"train.label_smoothing=0.1 applies to cross-entropy only") as error:
        validate(compose(["train.loss=squared_hinge", "train.label_smoothing=0.1"], root=REPO_ROOT))
    assert "\n" not in str(error.value)
    with pytest.raises(TextclfError, match=r"train\.loss"):
        validate(compose(["train.loss=hinge"], root=REPO_ROOT))


def test_with_multi_hot_targets_each_label_is_its_own_binary_hinge_and_weights_weigh_positives() -> None:
    logits = torch.tensor([[2.0, -0.5, 0.3], [0.0, 0.0, 0.0]])
    targets = torch.tensor([[1, 0, 1], [0, 0, 0]])
    # Document 0: label 0 past its margin, label 1 (target -1) costs 0.5^2, label 2 (target +1) 0.7^2;
    # document 1: each label one unit inside its margin.
    assert SquaredHingeLoss()(logits, targets) == pytest.approx((0.25 + 0.49 + 3.0) / 2)
    weighted = SquaredHingeLoss(torch.tensor([1.0, 1.0, 4.0]))(logits, targets)  # pos_weight: label 2's positive term
    assert weighted == pytest.approx((0.25 + 4 * 0.49 + 3.0) / 2)
    assert isinstance(build_criterion("squared_hinge", None, 0.0, multi_label=True), SquaredHingeLoss)
