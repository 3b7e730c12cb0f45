"""The Lightning parts the train stage runs with, beside Lightning's own ModelCheckpoint:
one row of curves per epoch, a seed per epoch, the best model held in memory until it is due,
and the resume point (the whole training state) saved at epoch ends.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection

from textclf.metrics import CURVE_COLUMNS, CURVES


class EpochHistory(Callback):
    """Keeps one row of losses and validation metrics per epoch (for the DVC plot)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after the epoch's validation, so both losses are in callback_metrics.
        metrics = trainer.callback_metrics
        row: dict[str, float] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for column, key in CURVES.items():
            if key in metrics:
                row[column] = round(float(metrics[key]), 6)
        self.rows.append(row)

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CURVE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()

    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows)}  # in the resume checkpoint: the curves survive a crash

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


class EpochSeed(Callback):
    """Reseeds python, numpy and torch at the start of every training epoch from (seed, epoch,
    rank): dropout and every other draw of an epoch depend on nothing that came before it, so a
    run resumed at an epoch boundary goes on exactly as the uninterrupted run did. (Shuffling
    does not use these generators at all: the sampler seeds its own from (seed, epoch).)"""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        key = f"{self.seed}:{trainer.current_epoch}:{trainer.global_rank}".encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:4], "little")
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


class BestInMemoryIO(TorchCheckpointIO):
    """Checkpoint IO that keeps checkpoints bound for ``held_dir`` (the best-so-far model) in
    memory and writes them on ``flush()``: when training ends, and before any other checkpoint
    (a resume point) is written, so a resume point never names a best model that is not on disk.
    A model that improves every epoch then costs one write instead of one per epoch (a fasttext
    n-gram table is about 70 MB: a tenth of a second each). Only rank 0 saves, so only rank 0
    holds any.

    What is on disk always matches the last resume point: a run killed between two resume
    points restarts from the older one, with the best model as it was then."""

    def __init__(self, held_dir: Path) -> None:
        super().__init__()
        self.held_dir = held_dir.absolute()
        self._held: dict[Path, dict[str, Any]] = {}

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path).absolute()
        if target.parent != self.held_dir:
            self.flush()  # the best model this checkpoint's callback state names, on disk first
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        # Copied now: training goes on changing the weights in place.
        self._held[target] = apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().clone())

    def remove_checkpoint(self, path: Any) -> None:
        self._held.pop(Path(path).absolute(), None)
        super().remove_checkpoint(path)

    def flush(self) -> None:
        for target, checkpoint in self._held.items():
            super().save_checkpoint(checkpoint, target)  # Lightning writes it in one piece
        self._held.clear()


class ResumePoint(Checkpoint):
    """Saves the whole training state (weights, optimizer, schedule, loop counters, callback
    states) to ``path`` at the end of a training epoch, through a temporary file and a rename,
    so a crash at any moment leaves the last saved epoch's state behind.

    Saves at the first epoch end at least ``interval_s`` seconds after the previous save (or the
    start): 0 saves every epoch. The full state of a large embedding table is hundreds of MB,
    which would cost a model with seconds-long epochs more than the epoch itself.

    A Checkpoint subclass, so Lightning runs it after every other callback (the epoch's row of
    curves and the best-checkpoint bookkeeping are in the state it saves)."""

    def __init__(self, path: Path, interval_s: float) -> None:
        self.path = path
        self.interval_s = interval_s
        self._last_save = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_save = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = time.monotonic() - self._last_save >= self.interval_s
        # Saving is collective under DDP: every rank follows rank 0's clock.
        if not trainer.strategy.broadcast(due, src=0):
            return
        staged = self.path.with_name(f"{self.path.name}.partial")
        trainer.save_checkpoint(staged, weights_only=False)  # all DDP ranks call it; rank 0 writes
        if trainer.is_global_zero:
            flush = getattr(trainer.logger, "flush", None)
            if flush is not None:  # the run's metrics up to here are stored before the state is
                flush()
            os.replace(staged, self.path)
        self._last_save = time.monotonic()
