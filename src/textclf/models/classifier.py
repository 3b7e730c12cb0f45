"""The LightningModule: a backbone from conf/model, the loss of train.loss (textclf.models.losses), the
metrics of textclf.metrics.

A multi-label model (``multi_label``: the processed data holds (N, C) multi-hot labels) has the
same backbone and logits, read as one sigmoid per label, and trains with binary cross-entropy
(textclf.models.losses), label smoothing and class weights in their binary forms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MeanMetric

from textclf.config import build
from textclf.errors import TextclfError
from textclf.metrics import TRAIN_LOSS_EPOCH, TRAIN_LOSS_STEP, VAL_LOSS, val_metrics
from textclf.models.embeddings import attach_embeddings
from textclf.models.losses import LossName, build_criterion
from textclf.models.optim import build_optimizer


class NonFiniteLoss(TextclfError):
    """The training loss became NaN or infinite: training stops rather than go on diverged."""


class TextClassifier(pl.LightningModule):
    """Builds its backbone from the model config, so a checkpoint alone rebuilds the model.

    ``model``, ``optimizer`` and ``scheduler`` are the resolved config sections (plain dicts
    with ``_target_``, one of config.TARGETS); they are saved as hyperparameters inside every
    checkpoint, which models/checkpoint.py validates before building this from them.
    """

    def __init__(
        self,
        model: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any],
        vocab_size: int,
        num_classes: int,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        loss: LossName = "cross_entropy",
        multi_label: bool = False,
    ) -> None:
        super().__init__()
        # Saved in the checkpoint; the train stage logs the whole flattened config itself.
        self.save_hyperparameters(logger=False)
        self.backbone: nn.Module = build("model", model, vocab_size=vocab_size, num_classes=num_classes)
        # What a backbone read from elsewhere (a pretrained model's configuration, from its files)
        # joins its settings in the checkpoint, so the checkpoint alone rebuilds it (models/hf.py).
        recorded = getattr(self.backbone, "checkpoint_settings", dict)()
        if recorded:
            self.hparams["model"] = {**model, **recorded}
        # (C,) loss weight per class (train.class_weights; a multi-label model's pos_weight);
        # None weighs every document alike.
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.criterion = build_criterion(loss, weight, label_smoothing, multi_label)
        self.multi_label = multi_label
        self.val_metrics = val_metrics(num_classes, multi_label)
        self.train_loss = MeanMetric()  # the epoch's training loss, weighted by documents

    def setup(self, stage: str) -> None:
        # A pretrained backbone reads its weights here, in every process, before a resume point
        # (restored after setup) or training replaces them; built, it read only its config.
        if stage == "fit" and hasattr(self.backbone, "load_pretrained"):
            self.backbone.load_pretrained()
        # A frozen encoder's document vectors, computed once for the train and val splits (or
        # read back from the cache), which their batches then carry in place of the tokens.
        if stage == "fit" and getattr(self.backbone, "fixed_embeddings", False):
            attach_embeddings(self.trainer, self.backbone)
        # Backbones that weight words by corpus statistics (fasttext's tfidf) learn them from
        # the training split here, once; they are buffers, so checkpoints keep them.
        if stage == "fit" and hasattr(self.backbone, "set_document_frequency"):
            split = self.trainer.datamodule.splits["train"]
            frequency = split.document_frequency(self.hparams.vocab_size)
            self.backbone.set_document_frequency(frequency, len(split))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The batch mapping the encoder makes (the regex encoder's: tokens (T,), offsets (B,),
        lengths (B,); see textclf.encoders) -> logits (B, num_classes). Extra keys (labels)
        are left to the caller."""
        return self.backbone(batch)

    def _logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self(batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.criterion(self._logits(batch), batch["labels"])
        finite = bool(torch.isfinite(loss))  # one host sync per step; detect_anomaly is far slower
        # Under DDP every rank must stop at the same step, or the others would wait forever in
        # the gradient all-reduce: one flag is reduced across ranks (free on a single device).
        if self.trainer.strategy.reduce_boolean_decision(not finite, all=False):
            value = loss.item() if not finite else "non-finite on another DDP rank"
            raise NonFiniteLoss(
                f"training loss is {value} at epoch {self.current_epoch}, step {self.global_step}"
                " (lower optimizer.lr or set trainer.gradient_clip_val)"
            )
        size = batch["labels"].shape[0]
        # Every step counts in the epoch's mean (``train_loss.update``, ~20 us); ``self.log``, whose
        # bookkeeping costs ~0.25 ms a call (a sixtieth of a fasttext step on 2 cores), runs only
        # on the steps the loggers record (``trainer.log_every_n_steps``) and once per epoch, at
        # whose end Lightning computes the metric (synced across DDP ranks) and resets it.
        self.train_loss.update(loss.detach(), size)
        every = self.trainer.log_every_n_steps
        if every > 0 and (self.global_step + 1) % every == 0:  # Lightning's own test for a logging step
            self.log(TRAIN_LOSS_STEP, loss, on_step=True, on_epoch=False, batch_size=size)
        if self.trainer.is_last_batch:  # here, not in on_train_epoch_end: EpochHistory reads it before that hook
            self.log(TRAIN_LOSS_EPOCH, self.train_loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self._logits(batch)
        loss = self.criterion(logits, batch["labels"])
        size = batch["labels"].shape[0]
        # A multi-label model's metrics take probabilities (torchmetrics would take logits that
        # all happen to lie in [0, 1] for probabilities).
        self.val_metrics.update(logits.sigmoid() if self.multi_label else logits, batch["labels"])
        self.log(VAL_LOSS, loss, on_epoch=True, batch_size=size, sync_dist=True)
        # Logging the metric objects lets Lightning compute and sync them across DDP ranks.
        self.log_dict(self.val_metrics, on_epoch=True, batch_size=size)

    def configure_optimizers(self) -> dict[str, Any]:
        # The backbone's parameters are all the module's (the loss weights and metrics hold none).
        optimizer = build_optimizer(build("optimizer", self.hparams.optimizer), self.backbone)
        scheduler = build("scheduler", self.hparams.scheduler)(
            optimizer=optimizer, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
