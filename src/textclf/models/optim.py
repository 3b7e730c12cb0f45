"""One optimizer over dense parameters and sparse-gradient embedding tables.

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


def build_optimizer(make_dense: Callable[..., Optimizer], module: nn.Module) -> Optimizer:
    """``make_dense(params=...)`` for every parameter, or for the dense ones plus SparseAdam
    (same learning rate; Adam's betas where the dense optimizer has them) for sparse tables."""
    sparse = sparse_parameters(module)
    if not sparse:
        return make_dense(params=module.parameters())
    sparse_ids = {id(p) for p in sparse}
    dense_params: Iterable[nn.Parameter] = [p for p in module.parameters() if id(p) not in sparse_ids]
    dense = make_dense(params=dense_params)
    group = dense.param_groups[0]
    extra = {"betas": group["betas"]} if "betas" in group else {}
    return DenseSparseOptimizer(dense, SparseAdam(sparse, lr=group["lr"], **extra))
