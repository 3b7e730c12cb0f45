"""A linear classifier over sublinear TF-IDF document vectors (the n-gram encoder's features).

A document's vector is scikit-learn's ``TfidfVectorizer(sublinear_tf=True, norm="l2")`` row
over the same vocabulary: each feature weighs (1 + log tf) * idf, with the smoothed idf of the
training split (set_document_frequency), and the vector is scaled to unit length. The
classifier is one weight row per feature (an embedding table of num_classes columns), summed
over a document's features by those weights (an embedding bag), plus a bias: logits = x W + b. With ``sparse`` its
gradient covers only the rows a batch used (stepped by SparseAdam, models/optim.py), so a step
costs what the batch's features do, not the whole table's (millions of n-grams).
Ids 0 and 1 (<pad>, <unk>: n-grams outside the vocabulary) weigh nothing, as scikit-learn
ignores a word it has not seen.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from textclf.config import PositiveInt
from textclf.data.encoded import UNK_ID


def distinct_pairs(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T,) int64 keys -> (their distinct values ascending, how often each occurs). One pass when
    they are sorted already (preprocess writes a bag encoder's ids sorted within each document,
    which makes document * vocab_size + id ascending over a batch); else a sort."""
    if keys.numel() < 2 or bool((keys[1:] >= keys[:-1]).all()):
        return torch.unique_consecutive(keys, return_counts=True)
    return torch.unique(keys, return_counts=True)


class LinearClassifier(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, sparse: bool, max_len: PositiveInt | None = None) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        # max_len (ids kept per document) is not used here: data.datamodule.clip_documents cuts
        # the documents to it wherever the model runs (train, evaluate, the shipped model).
        # (vocab_size,) smoothed idf from the training split; a buffer, so checkpoints carry it.
        idf = torch.ones(vocab_size)
        idf[: UNK_ID + 1] = 0.0
        self.register_buffer("idf", idf)
        # (vocab_size, num_classes): one weight row per feature; zero, so the model starts at
        # uniform probabilities (the loss is convex in the weights and the bias).
        self.weight = nn.Embedding(vocab_size, num_classes, sparse=sparse)
        nn.init.zeros_(self.weight.weight)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def set_document_frequency(self, document_frequency: torch.Tensor, num_documents: int) -> None:
        """Smoothed idf, as scikit-learn's TfidfVectorizer: log((1 + n) / (1 + df)) + 1."""
        idf = torch.log((1 + num_documents) / (1 + document_frequency.double())) + 1
        idf[: UNK_ID + 1] = 0.0
        self.idf.copy_(idf.to(self.idf.dtype))

    def document_vectors(
        self, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens (T,) ids, each repeated per occurrence, lengths (B,) ids per document ->
        the documents' L2-normalised sublinear TF-IDF vectors, sparsely: features (U,) the
        distinct ids of each document in turn, offsets (B,) where each document's start,
        weights (U,) their values (U: the batch's distinct (document, id) pairs)."""
        batch = lengths.numel()
        document = torch.repeat_interleave(torch.arange(batch, device=tokens.device), lengths)  # (T,)
        # One entry per (document, id), by document then id; the counts are term frequencies.
        pairs, tf = distinct_pairs(document * self.vocab_size + tokens)  # (U,)
        pair_document, features = pairs // self.vocab_size, pairs % self.vocab_size
        weights = (1 + torch.log(tf.to(self.idf.dtype))) * self.idf[features]  # (U,)
        squares = torch.zeros(batch, dtype=weights.dtype, device=tokens.device)
        squares.index_add_(0, pair_document, weights * weights)  # (B,) squared norm of each vector
        weights = weights / squares.sqrt().clamp(min=1e-12)[pair_document]  # an empty document stays zero
        offsets = torch.zeros(batch, dtype=torch.int64, device=tokens.device)
        torch.cumsum(torch.bincount(pair_document, minlength=batch)[:-1], dim=0, out=offsets[1:])
        return features, offsets, weights

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """batch: tokens (T,) flat ids, offsets (B,), lengths (B,) -> logits (B, num_classes)"""
        features, offsets, weights = self.document_vectors(batch["tokens"], batch["lengths"])
        # The batch's distinct features (R,), ascending, found with a (vocab_size,) mask rather
        # than a sort; their rows (R, C) are all the weights this batch reads, so a sparse
        # gradient holds R rows, each once (SparseAdam then updates R rows).
        present = torch.zeros(self.vocab_size, dtype=torch.bool, device=features.device)
        present[features] = True
        rows = present.nonzero().squeeze(1)  # (R,)
        position = torch.empty(self.vocab_size, dtype=torch.int64, device=features.device)
        position[rows] = torch.arange(rows.numel(), device=features.device)
        summed = F.embedding_bag(position[features], self.weight(rows), offsets, mode="sum", per_sample_weights=weights)
        return summed + self.bias  # (B, C)
