"""Pre-encoded splits: the compact tensors preprocess writes and every later stage reads.

A split of N documents is three tensors, so training never tokenizes:
  tokens  (T,)    int32  every document's token ids, concatenated
  offsets (N+1,)  int64  document i is tokens[offsets[i]:offsets[i+1]]
  labels  (N,)    int64  class index into labels.json
Token id 0 is padding and 1 is <unk>; real words start at 2.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from textclf.errors import TextclfError

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
SPLITS = ("train", "val", "test")
VOCAB_FILE, LABELS_FILE, MANIFEST_FILE = "vocab.txt", "labels.json", "manifest.json"


@dataclass(frozen=True)
class EncodedSplit:
    tokens: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.numel()

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @classmethod
    def from_token_ids(cls, documents: Sequence[Sequence[int]], labels: Sequence[int]) -> "EncodedSplit":
        lengths = torch.tensor([len(doc) for doc in documents], dtype=torch.int64)
        offsets = torch.zeros(len(documents) + 1, dtype=torch.int64)
        torch.cumsum(lengths, dim=0, out=offsets[1:])
        flat = [token for doc in documents for token in doc]
        return cls(
            tokens=torch.tensor(flat, dtype=torch.int32),
            offsets=offsets,
            labels=torch.tensor(list(labels), dtype=torch.int64),
        )

    def document_frequency(self, vocab_size: int) -> torch.Tensor:
        """(vocab_size,) int64: in how many documents each token id occurs."""
        document = torch.repeat_interleave(torch.arange(len(self)), self.lengths)
        pairs = torch.unique(document * vocab_size + self.tokens.long())
        return torch.bincount(pairs % vocab_size, minlength=vocab_size)

    def save(self, path: Path) -> None:
        torch.save({"tokens": self.tokens, "offsets": self.offsets, "labels": self.labels}, path)

    @classmethod
    def load(cls, path: Path) -> "EncodedSplit":
        if not path.is_file():
            raise TextclfError(f"{path}: processed data not found (run `dvc repro preprocess`)")
        data = torch.load(path, map_location="cpu", weights_only=True)
        return cls(tokens=data["tokens"], offsets=data["offsets"], labels=data["labels"])


def build_vocabulary(
    documents: Iterable[Sequence[str]], min_freq: int, max_size: int | None
) -> list[str]:
    """Words seen at least ``min_freq`` times, most frequent first (ties alphabetical)."""
    counts = Counter(token for doc in documents for token in doc)
    kept = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    if max_size is not None:
        kept = kept[:max_size]
    return [PAD, UNK, *kept]


def encode(documents: Iterable[Sequence[str]], vocabulary: Sequence[str]) -> list[list[int]]:
    index = {word: i for i, word in enumerate(vocabulary)}
    return [[index.get(token, UNK_ID) for token in doc] for doc in documents]


def stratified_holdout(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Splits indices into (kept, held out), holding out round(fraction * n) of each class.

    Each class keeps at least one training example. Deterministic for a given seed.
    """
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    kept, held = [], []
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=generator).tolist()
        n_held = min(round(fraction * len(members)), len(members) - 1)
        held.extend(members[i] for i in order[:n_held])
        kept.extend(members[i] for i in order[n_held:])
    return sorted(kept), sorted(held)


def read_vocabulary(processed: Path) -> list[str]:
    path = processed / VOCAB_FILE
    if not path.is_file():
        raise TextclfError(f"{path}: processed data not found (run `dvc repro preprocess`)")
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def read_labels(processed: Path) -> list[str]:
    path = processed / LABELS_FILE
    if not path.is_file():
        raise TextclfError(f"{path}: processed data not found (run `dvc repro preprocess`)")
    return json.loads(path.read_text(encoding="utf-8"))


def read_manifest(processed: Path) -> dict:
    path = processed / MANIFEST_FILE
    if not path.is_file():
        raise TextclfError(f"{path}: processed data not found (run `dvc repro preprocess`)")
    return json.loads(path.read_text(encoding="utf-8"))
