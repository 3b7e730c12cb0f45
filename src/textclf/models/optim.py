"""The optimizer of a backbone: one over its parameter groups, or over dense parameters and
sparse-gradient embedding tables.

A backbone may define ``optimizer_groups() -> list[dict]``: param groups, each with its own
``weight_decay`` (replacing the optimizer's) and ``lr_scale`` (multiplying the optimizer's lr),
as a pretrained encoder wants no decay on biases and norms and smaller steps in lower layers
(models/hf.py). The others get one group of all their parameters.

A dense Adam over a large n-gram table updates every row every step; ``nn.EmbeddingBag(
sparse=True)`` yields gradients for the rows a batch touched only, which torch's SparseAdam
updates lazily. Lightning's automatic optimization and LR schedulers expect one optimizer, so
this one steps both: the configured optimizer for dense parameters, SparseAdam for sparse ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer, SparseAdam


def sparse_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Weights of embedding layers built with ``sparse=True``."""
    return [sub.weight for sub in module.modules() if isinstance(sub, (nn.Embedding, nn.EmbeddingBag)) and sub.sparse]


class DenseSparseOptimizer(Optimizer):
    """Steps ``dense`` and ``sparse`` together; shares their param_groups, so an LR scheduler
    built on this optimizer scales both learning rates."""

    def __init__(self, dense: Optimizer, sparse: Optimizer) -> None:
        self.dense, self.sparse = dense, sparse
        # The children's group dicts themselves (not copies): lr changes reach both.
        super().__init__([*dense.param_groups, *sparse.param_groups], defaults={})
        self.state = dense.state  # what Lightning inspects for tensors to move; see state_dict

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.dense.step()
        self.sparse.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none)
        self.sparse.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.dense.load_state_dict(state_dict["dense"])
        self.sparse.load_state_dict(state_dict["sparse"])


def grouped_optimizer(make_dense: Callable[..., Optimizer], groups: list[dict[str, Any]]) -> Optimizer:
    """``make_dense(params=groups)``, each group's lr the optimizer's times its ``lr_scale``
    (1 when absent; the key stays in the group). Set before any scheduler is built, it is the
    group's base lr, which a LambdaLR schedule scales (``initial_lr``)."""
    optimizer = make_dense(params=[group for group in groups if group["params"]])
    for group in optimizer.param_groups:
        group["lr"] = optimizer.defaults["lr"] * group.get("lr_scale", 1.0)
    return optimizer


def build_optimizer(make_dense: Callable[..., Optimizer], module: nn.Module) -> Optimizer:
    """``make_dense(params=...)`` over the module's ``optimizer_groups()`` where it defines
    them; else for every parameter, or for the dense ones plus SparseAdam (same learning
    rate; Adam's betas where the dense optimizer has them) for sparse tables."""
    groups = getattr(module, "optimizer_groups", None)
    if groups is not None:
        return grouped_optimizer(make_dense, groups())
    sparse = sparse_parameters(module)
    if not sparse:
        return make_dense(params=module.parameters())
    sparse_ids = {id(p) for p in sparse}
    dense_params: Iterable[nn.Parameter] = [p for p in module.parameters() if id(p) not in sparse_ids]
    dense = make_dense(params=dense_params)
    group = dense.param_groups[0]
    extra = {"betas": group["betas"]} if "betas" in group else {}
    return DenseSparseOptimizer(dense, SparseAdam(sparse, lr=group["lr"], **extra))
