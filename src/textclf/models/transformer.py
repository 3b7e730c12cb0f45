"""Transformer encoder (pre-norm) over word + learned position embeddings, pooled over the real
(unpadded) positions: ``mean``, or ``max_mean`` (max- and mean-pooling concatenated, as the LSTM's
"concat pooling"; the max path picks out the few telling words of a long message)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from textclf.config import Fraction, PositiveInt
from textclf.data.encoded import PAD_ID
from textclf.errors import TextclfError
from textclf.models.sequence import pad_batch, pool, pooled_width


class TransformerClassifier(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: PositiveInt,
        num_heads: PositiveInt,
        num_layers: PositiveInt,
        ff_dim: PositiveInt,
        dropout: Fraction,
        sparse: bool,
        max_len: PositiveInt,
        pooling: Literal["mean", "max_mean"] = "mean",
    ) -> None:
        super().__init__()
        self.pooling = pooling
        if embed_dim % num_heads:
            raise TextclfError(f"model.embed_dim ({embed_dim}) must be divisible by model.num_heads ({num_heads})")
        self.max_len = max_len  # positions available, and tokens kept per document
        # sparse=True: only the rows of words in the batch get gradients (stepped by SparseAdam).
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID, sparse=sparse)
        self.position = nn.Embedding(max_len, embed_dim)
        layer = nn.TransformerEncoderLayer(
            embed_dim, num_heads, ff_dim, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(pooled_width(embed_dim, pooling), num_classes)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """batch: tokens (T,) flat ids, lengths (B,) tokens per document (documents follow
        each other in tokens; offsets (B,) unused) -> logits (B, num_classes)"""
        tokens, lengths = batch["tokens"], batch["lengths"]
        ids = pad_batch(tokens, lengths)[:, : self.max_len]  # (B, L)
        positions = torch.arange(ids.size(1), device=ids.device)
        hidden = self.dropout(self.embedding(ids) + self.position(positions))  # (B, L, E)
        padding = ids.eq(PAD_ID)  # (B, L) True at padding
        padding[:, 0] = False  # an empty document still attends to its first (pad) position
        hidden = self.norm(self.encoder(hidden, src_key_padding_mask=padding))
        return self.classifier(self.dropout(pool(hidden, ~padding, self.pooling)))
