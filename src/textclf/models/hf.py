"""A pretrained Hugging Face encoder (AutoModel) with a linear head, fine-tuned or frozen.

The ids come from the model's own tokenizer (textclf.encoders.hf, chosen with the model by
``model=hf``), already cut with their special tokens: a document is one window of at most
``max_len`` tokens, or (encoder.truncation=chunks) up to ``max_chunks`` windows one after the
other, each but the last exactly ``max_len`` long, so ``max_len`` alone cuts it back into
them. The batch's W windows are padded to (W, L) with the model's padding id, masked by their
lengths and encoded in one pass; each is pooled and a document's pooled windows averaged (B, H)
before the dropout and the head: one prediction per document.

With a frozen encoder that vector is a fixed function of the document: the train stage
computes it once per split (textclf.models.embeddings) and the batches carry it as
``features``, which ``forward`` takes in place of the tokens.

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
from typing import Any, Literal, NamedTuple

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
        max_chunks: PositiveInt,
        pooling: Literal["cls", "mean"],
        dropout: Fraction,
        freeze_encoder: bool,
        cache_embeddings: bool,
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
        self.max_len = max_len  # tokens per window (one window per document but with chunks)
        self.max_chunks = max_chunks  # windows per document at most (data.datamodule.tokens_kept)
        self.pooling = pooling
        self.freeze_encoder = freeze_encoder
        self.cache_embeddings = cache_embeddings
        self.architecture = architecture_of(config)
        self.pretrained = architecture is None  # weights to read from ``name`` before training
        self.pad_id = config.pad_token_id if isinstance(config.pad_token_id, int) else 0
        self.encoder = AutoModel.from_config(config, dtype=torch.float32, trust_remote_code=False)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # BERT's pooler: unused (the head pools), so DDP finds no idle weights
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()  # from the start: Lightning never calls train(), and restores the modes it found
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

    @property
    def fixed_embeddings(self) -> bool:
        """Whether ``embed`` is worth computing once per training (model.cache_embeddings): the
        encoder is frozen and none of its parameters trains (an adapter inside it would)."""
        return (
            self.cache_embeddings
            and self.freeze_encoder
            and not any(parameter.requires_grad for parameter in self.encoder.parameters())
        )

    def embed(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """batch: tokens (T,) flat ids with their special tokens, lengths (B,) tokens per
        document (offsets (B,) unused) -> (B, H) the document vectors the head reads: each
        window's state pooled (cls or mean), a document's windows averaged."""
        tokens, lengths = batch["tokens"], batch["lengths"]
        windows = split_windows(lengths, self.max_len)
        ids = pad_batch(tokens, windows.lengths, pad_id=self.pad_id)  # (W, L), L <= max_len
        real = torch.arange(ids.size(1), device=ids.device).unsqueeze(0) < windows.lengths.unsqueeze(1)  # (W, L)
        real[:, 0] = True  # an empty document (the tokenizer always adds some) still attends to one position
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            hidden = self.encoder(input_ids=ids, attention_mask=real.long()).last_hidden_state  # (W, L, H)
        pooled = hidden[:, 0] if self.pooling == "cls" else pool(hidden, real, "mean")  # (W, H)
        # Each window in its document's row, at its place there (B, C, H), zeros elsewhere:
        # summed over C and divided by the count, the mean of the document's windows; a
        # document of one window is its window's vector, bit for bit. (An index_put, not an
        # index_add: deterministic on a GPU too.)
        most = int(windows.count.max()) if lengths.numel() else 1
        slots = pooled.new_zeros(lengths.numel(), most, pooled.size(1))  # (B, C, H)
        slots[windows.document, windows.position] = pooled
        return slots.sum(dim=1) / windows.count.unsqueeze(1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """batch: as ``embed`` takes, or ``features`` (B, H), embed's output computed before
        (a frozen encoder's, see textclf.models.embeddings) -> logits (B, num_classes)"""
        features = batch.get("features")
        return self.classifier(self.dropout(self.embed(batch) if features is None else features))


class Windows(NamedTuple):
    """The windows of a batch of documents, each (W,): ``lengths`` tokens per window,
    ``document`` the index of its document, ``position`` its place there; ``count`` (B,)
    windows per document."""

    lengths: torch.Tensor
    document: torch.Tensor
    position: torch.Tensor
    count: torch.Tensor


def split_windows(lengths: torch.Tensor, window: int) -> Windows:
    """lengths (B,) tokens per document, each stored as consecutive windows of ``window``
    tokens, the last one shorter -> its Windows. A document has ceil(length / window) windows,
    an empty one a single empty window; the windows of the flat tokens (T,) follow one another
    in this order."""
    count = torch.div(lengths + window - 1, window, rounding_mode="floor").clamp(min=1)  # (B,)
    document = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), count)  # (W,)
    first = torch.cumsum(count, dim=0) - count  # (B,) the index of each document's first window
    position = torch.arange(document.numel(), device=lengths.device) - first[document]  # (W,)
    window_lengths = (lengths[document] - position * window).clamp(max=window)  # (W,)
    return Windows(window_lengths, document, position, count)
