"""Turning a flat batch (tokens, lengths) into the padded (B, L) form sequence models use, and
pooling their (B, L, H) outputs back to one vector per document."""

from __future__ import annotations

from typing import Literal

import torch

from textclf.data.encoded import PAD_ID


def pad_batch(tokens: torch.Tensor, lengths: torch.Tensor, pad_id: int = PAD_ID) -> torch.Tensor:
    """tokens (T,), lengths (B,) -> ids (B, max(lengths)) padded with ``pad_id`` (a pretrained
    model's own; PAD_ID, <pad> of the regex encoder's vocabulary, by default).

    Empty documents become one padding step, so every row has at least one position.
    """
    width = max(int(lengths.max()) if lengths.numel() else 1, 1)
    padded = tokens.new_full((lengths.numel(), width), pad_id)
    positions = torch.arange(width, device=tokens.device)
    mask = positions.unsqueeze(0) < lengths.unsqueeze(1)  # (B, L) True at real tokens
    padded[mask] = tokens
    return padded


Pooling = Literal["max", "mean", "max_mean"]


def pooled_width(hidden_dim: int, pooling: Pooling) -> int:
    """Width of ``pool``'s output for (B, L, hidden_dim) inputs."""
    return hidden_dim * (2 if pooling == "max_mean" else 1)


def pool(hidden: torch.Tensor, real: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """hidden (B, L, H), real (B, L) True at real positions (at least one per row) -> (B, H),
    or (B, 2H) for ``max_mean``: max and mean concatenated ("concat pooling", Howard & Ruder
    2018). Padded positions are never the max and never in the mean."""
    mask = real.unsqueeze(-1)  # (B, L, 1)
    pooled = []  # only the poolings asked for: forward and backward run over all of (B, L, H)
    if pooling in ("max", "max_mean"):
        pooled.append(hidden.masked_fill(~mask, float("-inf")).max(dim=1).values)  # (B, H)
    if pooling in ("mean", "max_mean"):
        pooled.append(torch.where(mask, hidden, 0.0).sum(1) / mask.sum(1).clamp(min=1))  # (B, H)
    return torch.cat(pooled, dim=1) if len(pooled) > 1 else pooled[0]
