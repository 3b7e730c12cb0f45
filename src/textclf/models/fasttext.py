"""fastText-style classifier: a weighted mean of word and hashed-bigram embeddings, then a
linear layer. With ``weighting: tfidf`` each word counts by its sublinear TF-IDF weight
(1 + log tf) * idf, as in a TF-IDF vector; ``mean`` is fastText's plain average."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from textclf.config import Fraction, NonNegativeInt, PositiveInt

# Multiplier of the bigram hash (a prime larger than any vocabulary we expect).
BIGRAM_HASH_PRIME = 1_000_003


def bigram_ids(
    tokens: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, vocab_size: int, buckets: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hashed ids of adjacent token pairs within each document.

    tokens (T,), offsets (B,), lengths (B,) -> ids (T - B',), offsets (B,), lengths (B,)
    where ids fall in [vocab_size, vocab_size + buckets) and B' counts non-empty documents.
    """
    pair_lengths = (lengths - 1).clamp(min=0)
    if tokens.numel() < 2:
        empty = tokens.new_zeros(0)
        return empty, torch.zeros_like(offsets), pair_lengths
    # A pair starting at position p is inside one document unless p is a document's last token.
    is_last = torch.zeros(tokens.numel(), dtype=torch.bool, device=tokens.device)
    ends = offsets + lengths - 1
    is_last[ends[lengths > 0]] = True
    left = tokens[:-1][~is_last[:-1]]
    right = tokens[1:][~is_last[:-1]]
    ids = (left * BIGRAM_HASH_PRIME + right) % buckets + vocab_size
    pair_offsets = torch.zeros_like(offsets)
    torch.cumsum(pair_lengths[:-1], dim=0, out=pair_offsets[1:])
    return ids, pair_offsets, pair_lengths


class FastText(nn.Module):
    """Bag of word + bigram embeddings (Joulin et al., 2016).

    One table holds ``vocab_size`` word rows then ``ngram_buckets`` hashed bigram rows; a
    document is the mean of its rows, so cost is linear in its length and independent of order.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: PositiveInt,
        ngram_buckets: NonNegativeInt,
        dropout: Fraction,
        sparse: bool,
        weighting: Literal["mean", "tfidf"],
        max_len: PositiveInt | None = None,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.ngram_buckets = ngram_buckets
        self.weighting = weighting
        # Inverse document frequency per word id, from the training split (set_document_frequency);
        # a buffer, so checkpoints carry it.
        self.register_buffer("idf", torch.ones(vocab_size))
        # max_len (tokens kept per document) is not used here: data.datamodule.clip_documents cuts
        # the documents to it wherever the model runs (train, evaluate, the shipped model).
        # sparse=True: gradients cover only the rows a batch used (stepped by SparseAdam).
        self.embedding = nn.EmbeddingBag(vocab_size + ngram_buckets, embed_dim, mode="sum", sparse=sparse)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(embed_dim, num_classes)
        nn.init.uniform_(self.embedding.weight, -1.0 / embed_dim, 1.0 / embed_dim)

    def set_document_frequency(self, document_frequency: torch.Tensor, num_documents: int) -> None:
        """Smoothed idf, as scikit-learn's TfidfVectorizer: log((1 + n) / (1 + df)) + 1."""
        idf = torch.log((1 + num_documents) / (1 + document_frequency.double())) + 1
        self.idf.copy_(idf.to(self.idf.dtype))

    def _word_weights(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(T,) weight of each token occurrence: its document's (1 + log tf) * idf spread
        evenly over the tf occurrences, so a bag sums to the document's TF-IDF vector."""
        document = torch.repeat_interleave(torch.arange(lengths.numel(), device=tokens.device), lengths)
        _, which, counts = torch.unique(document * self.vocab_size + tokens, return_inverse=True, return_counts=True)
        tf = counts[which].to(self.idf.dtype)
        return self.idf[tokens] * (1 + torch.log(tf)) / tf

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """batch: tokens (T,) flat ids, offsets (B,) where each document starts in tokens,
        lengths (B,) tokens per document -> logits (B, num_classes)"""
        tokens, offsets, lengths = batch["tokens"], batch["offsets"], batch["lengths"]
        if self.weighting == "tfidf":
            weights = self._word_weights(tokens, lengths)  # (T,)
            summed = self.embedding(tokens, offsets, per_sample_weights=weights)  # (B, D)
            document = torch.repeat_interleave(torch.arange(lengths.numel(), device=tokens.device), lengths)
            total = torch.zeros(lengths.numel(), dtype=weights.dtype, device=tokens.device)
            total.index_add_(0, document, weights)  # (B,) sum of each document's weights
        else:
            summed = self.embedding(tokens, offsets)  # (B, D)
            total = lengths.to(summed.dtype)
        if self.ngram_buckets > 0:
            ids, pair_offsets, pair_lengths = bigram_ids(tokens, offsets, lengths, self.vocab_size, self.ngram_buckets)
            summed = summed + self.embedding(ids, pair_offsets)  # each bigram weighs 1
            total = total + pair_lengths
        mean = summed / total.clamp(min=1).unsqueeze(1).to(summed.dtype)
        return self.classifier(self.dropout(mean))
