"""Learning-rate schedules stepped once per optimizer step (conf/scheduler/*.yaml).

Each takes the optimizer and the total number of optimizer steps, which the LightningModule
knows only once training starts (``trainer.estimated_stepping_batches``).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from textclf.config import Fraction


def _warmup_steps(total_steps: int, warmup_fraction: float) -> int:
    return int(total_steps * warmup_fraction)


def constant(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: 1.0)


def cosine(optimizer: Optimizer, total_steps: int, warmup_fraction: Fraction, min_lr_ratio: Fraction) -> LambdaLR:
    warmup = _warmup_steps(total_steps, warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def linear_warmup(optimizer: Optimizer, total_steps: int, warmup_fraction: Fraction) -> LambdaLR:
    warmup = _warmup_steps(total_steps, warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(total_steps - warmup, 1))

    return LambdaLR(optimizer, factor)
