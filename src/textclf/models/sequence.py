"""Turning a flat batch (tokens, lengths) into the padded (B, L) form sequence models use."""

from __future__ import annotations

import torch

from textclf.data.encoded import PAD_ID


def pad_batch(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """tokens (T,), lengths (B,) -> ids (B, max(lengths)) padded with PAD_ID.

    Empty documents become one <pad> step, so every row has at least one position.
    """
    width = max(int(lengths.max()) if lengths.numel() else 1, 1)
    padded = tokens.new_full((lengths.numel(), width), PAD_ID)
    positions = torch.arange(width, device=tokens.device)
    mask = positions.unsqueeze(0) < lengths.unsqueeze(1)  # (B, L) True at real tokens
    padded[mask] = tokens
    return padded
