"""The framework-free reference: the same backbone, tensors, batches, optimizer and epochs as the
train stage, in a plain PyTorch loop with no Lightning, MLflow, progress bar or checkpointing.

It keeps the work the pipeline cannot skip (one validation pass per epoch, as model selection
needs), so pipeline time / bare time measures the framework's overhead and nothing else.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch.nn import functional as F

from textclf.config import Config, to_dict
from textclf.data.datamodule import TextDataModule, tokens_kept
from textclf.models.optim import build_optimizer


def bare_train(cfg: Config, processed: Path) -> dict[str, float]:
    """Trains like the train stage does; returns wall seconds and the last validation accuracy."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    resolved = to_dict(cfg)
    data = TextDataModule(
        processed,
        batch_size=cfg.train.batch_size,
        eval_batch_size=cfg.train.eval_batch_size,
        max_len=tokens_kept(cfg.model),
        seed=cfg.seed,
        length_buckets=cfg.train.length_buckets,
    )
    data.setup("fit")
    model = instantiate(resolved["model"], vocab_size=data.vocab_size, num_classes=data.num_classes)
    if hasattr(model, "set_document_frequency"):
        train_split = data.splits["train"]
        model.set_document_frequency(train_split.document_frequency(data.vocab_size), len(train_split))
    optimizer = build_optimizer(instantiate(resolved["optimizer"]), model)
    epochs = cfg.trainer.max_epochs
    steps = epochs * len(data.train_dataloader())
    scheduler = instantiate(resolved["scheduler"])(optimizer=optimizer, total_steps=steps)
    accuracy = 0.0
    for _ in range(epochs):
        model.train()
        for batch in data.train_dataloader():
            logits = model(batch)
            loss = F.cross_entropy(logits, batch["labels"], label_smoothing=cfg.train.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        correct = total = 0
        with torch.inference_mode():
            for batch in data.val_dataloader():
                predicted = model(batch).argmax(1)
                correct += int((predicted == batch["labels"]).sum())
                total += batch["labels"].numel()
        accuracy = correct / total
    return {"seconds": time.perf_counter() - started, "val_accuracy": accuracy}
