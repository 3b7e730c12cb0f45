"""Bidirectional LSTM over word embeddings, pooled over the real (unpadded) time steps.

``pooling: max_mean`` concatenates max- and mean-pooling ("concat pooling", Howard & Ruder
2018): the mean path gives every step a gradient, so the model learns faster than max alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from textclf.config import Fraction, PositiveInt
from textclf.data.encoded import PAD_ID
from textclf.models.sequence import pad_batch, pool, pooled_width


class LSTMClassifier(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: PositiveInt,
        hidden_dim: PositiveInt,
        num_layers: PositiveInt,
        bidirectional: bool,
        dropout: Fraction,
        sparse: bool,
        pooling: Literal["max", "max_mean"],
        max_len: PositiveInt | None,
    ) -> None:
        super().__init__()
        self.pooling = pooling
        # max_len (tokens kept per document) is not used here: data.datamodule.clip_documents cuts
        # the documents to it wherever the model runs (train, evaluate, the shipped model).
        # sparse=True: only the rows of words in the batch get gradients (stepped by SparseAdam).
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID, sparse=sparse)
        self.lstm = nn.LSTM(
            embed_dim,
            hidden_dim,
            num_layers=num_layers,
            bidirectional=bidirectional,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(pooled_width(hidden_dim * (2 if bidirectional else 1), pooling), num_classes)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """batch: tokens (T,) flat ids, lengths (B,) tokens per document (documents follow
        each other in tokens; offsets (B,) unused) -> logits (B, num_classes)"""
        tokens, lengths = batch["tokens"], batch["lengths"]
        ids = pad_batch(tokens, lengths)  # (B, L)
        steps = lengths.clamp(min=1)
        embedded = self.dropout(self.embedding(ids))  # (B, L, E)
        packed = pack_padded_sequence(embedded, steps.cpu(), batch_first=True, enforce_sorted=False)
        output, _ = self.lstm(packed)
        hidden, _ = pad_packed_sequence(output, batch_first=True)  # (B, max(steps), H)
        real = torch.arange(hidden.size(1), device=steps.device).unsqueeze(0) < steps.unsqueeze(1)  # (B, L)
        return self.classifier(self.dropout(pool(hidden, real, self.pooling)))
