"""A pretrained Hugging Face encoder (AutoModel) with a linear head, fine-tuned or frozen.

The ids come from the model's own tokenizer (textclf.encoders.hf, chosen with the model by
``model=hf``), already cut to ``max_len`` with their special tokens; each batch is padded to
(B, L) with the model's padding id and masked by the documents' lengths.

A checkpoint reloads without the model's files (the shipped model carries only the checkpoint
and the tokenizer): the encoder is always built from a configuration (AutoModel.from_config),
and the configuration the model was trained with is recorded as plain JSON data in the model's
settings (``architecture``, see ``checkpoint_settings``), so a checkpoint's hyperparameters
rebuild it; the weights are the checkpoint's. Only training reads the pretrained weights, from
``name``, once the module is set up to fit (``load_pretrained``, called by
TextClassifier.setup): building the model, on PyTorch's meta device too (train's memory
check), reads nothing but config.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import JsonValue
from torch import nn

from textclf.config import Fraction, PositiveInt
from textclf.errors import TextclfError
from textclf.models.sequence import pad_batch, pool
from textclf.pretrained import (
    architecture as architecture_of,
)
from textclf.pretrained import (
    check_max_len,
    config_from_architecture,
    load_config,
    load_weights,
)


class HuggingFaceClassifier(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        name: str,
        max_len: PositiveInt,
        pooling: Literal["cls", "mean"],
        dropout: Fraction,
        freeze_encoder: bool,
        # The model's configuration as recorded in a checkpoint (plain JSON data); null (the
        # config's value): read config.json from ``name``.
        architecture: dict[str, JsonValue] | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModel

        config = load_config(name) if architecture is None else config_from_architecture(architecture)
        check_max_len(name, max_len, config)
        if vocab_size > config.vocab_size:
            raise TextclfError(
                f"model.name={name!r}: the encoder's {vocab_size} token ids do not fit the model's "
                f"{config.vocab_size} embeddings (preprocess with the model's own tokenizer: encoder=hf)"
            )
        self.name = name
        self.max_len = max_len
        self.pooling = pooling
        self.freeze_encoder = freeze_encoder
        self.architecture = architecture_of(config)
        self.pretrained = architecture is None  # weights to read from ``name`` before training
        self.pad_id = config.pad_token_id if isinstance(config.pad_token_id, int) else 0
        self.encoder = AutoModel.from_config(config, dtype=torch.float32, trust_remote_code=False)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # BERT's pooler: unused (the head pools), so DDP finds no idle weights
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.encoder.config.hidden_size, num_classes)

    def checkpoint_settings(self) -> dict[str, Any]:
        """Settings recorded with the model's in its checkpoint (TextClassifier): what rebuilds
        it without the files of ``name``."""
        return {"architecture": self.architecture}

    def load_pretrained(self) -> None:
        """Copies the pretrained weights of ``name`` into the encoder (nothing for a model
        rebuilt from a checkpoint, whose weights are its own)."""
        if not self.pretrained:
            return
        source = load_weights(self.name).state_dict()
        missing, _ = self.encoder.load_state_dict(source, strict=False)  # extra: the pooler's weights
        if missing:
            raise TextclfError(f"model.name={self.name!r}: its weights lack {len(missing)} tensors ({missing[0]}, ...)")

    def train(self, mode: bool = True) -> HuggingFaceClassifier:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # frozen, it is a fixed feature extractor: no dropout either
        return self

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """batch: tokens (T,) flat ids with their special tokens, lengths (B,) tokens per
        document (offsets (B,) unused) -> logits (B, num_classes)"""
        tokens, lengths = batch["tokens"], batch["lengths"]
        ids = pad_batch(tokens, lengths, pad_id=self.pad_id)[:, : self.max_len]  # (B, L)
        real = torch.arange(ids.size(1), device=ids.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, L)
        real[:, 0] = True  # an empty document (the tokenizer always adds some) still attends to one position
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            hidden = self.encoder(input_ids=ids, attention_mask=real.long()).last_hidden_state  # (B, L, H)
        pooled = hidden[:, 0] if self.pooling == "cls" else pool(hidden, real, "mean")  # (B, H)
        return self.classifier(self.dropout(pooled))
