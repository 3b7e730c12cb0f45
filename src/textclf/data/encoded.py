"""Pre-encoded splits: the compact tensors preprocess writes and every later stage reads.

A split of N documents is three tensors, so training never tokenizes:
  tokens  (T,)    int32  every document's token ids, concatenated
  offsets (N+1,)  int64  document i is tokens[offsets[i]:offsets[i+1]]
  labels  (N,)    int64  class index into labels.json
          (N, C)  uint8  or, for a multi-label corpus, 1 where document i has label j (multi-hot)
Token id 0 is padding and 1 is <unk>; real words start at 2.
"""

from __future__ import annotations

import errno
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, count
from pathlib import Path

import numpy as np
import torch

from textclf.errors import TextclfError

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
SPLITS = ("train", "val", "test")  # <processed>/<split>.pt, as preprocess writes them
VOCAB_FILE, LABELS_FILE, MANIFEST_FILE = "vocab.txt", "labels.json", "manifest.json"


@dataclass(frozen=True)
class EncodedSplit:
    tokens: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @classmethod
    def from_token_ids(
        cls, documents: Sequence[Sequence[int]], labels: Sequence[int], id_map: np.ndarray | None = None
    ) -> EncodedSplit:
        """``documents``: token ids per document; ``id_map``, if given, maps them first
        (``RegexEncoder.fit_numbered``'s first-seen id -> vocabulary id)."""
        return cls.from_flat_ids(*flatten_documents(documents), labels, id_map)

    @classmethod
    def from_flat_ids(
        cls, flat: np.ndarray, lengths: np.ndarray, labels: Sequence[int], id_map: np.ndarray | None = None
    ) -> EncodedSplit:
        """``flat`` (T,): every document's token ids, concatenated; ``lengths`` (N,): tokens per
        document; ``id_map`` as in ``from_token_ids``."""
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = id_map[flat] if id_map is not None else flat.astype(np.int32)
        return cls(
            tokens=torch.from_numpy(tokens),
            offsets=torch.from_numpy(offsets),
            labels=torch.tensor(list(labels), dtype=torch.int64),
        )

    def document_frequency(self, vocab_size: int, chunk_tokens: int = 1 << 24) -> torch.Tensor:
        """(vocab_size,) int64: in how many documents each token id occurs. Counted over runs of
        whole documents of about ``chunk_tokens`` ids, so the (document, token) pairs of a large
        corpus are never all in memory at once (8 bytes each, then sorted unless in order)."""
        frequency = torch.zeros(vocab_size, dtype=torch.int64)
        lengths, offsets = self.lengths, self.offsets
        start = 0
        while start < len(self):
            # The documents that start before chunk_tokens more ids (at least one).
            stop = int(torch.searchsorted(offsets, offsets[start] + chunk_tokens, right=True)) - 1
            stop = min(max(stop, start + 1), len(self))
            tokens = self.tokens[offsets[start] : offsets[stop]].long()
            document = torch.repeat_interleave(torch.arange(stop - start), lengths[start:stop])
            keys = document * vocab_size + tokens  # ascending when each document's ids are sorted (a bag encoder's)
            in_order = keys.numel() < 2 or bool((keys[1:] >= keys[:-1]).all())
            pairs = torch.unique_consecutive(keys) if in_order else torch.unique(keys)
            frequency += torch.bincount(pairs % vocab_size, minlength=vocab_size)
            start = stop
        return frequency

    def save(self, path: Path) -> None:
        """torch.save to ``path``; a full disk raises OSError(ENOSPC) like any other write.

        torch's C++ writer reports a failed write as a RuntimeError without the errno ("unexpected
        pos 704 vs 598" on a full tmpfs, torch 2.13), so a failure with the filesystem out of
        space is taken for what it is. (Saving through a Python file object would keep the
        OSError, but changes the bytes: the archive's inner name comes from the path.)"""
        try:
            torch.save({"tokens": self.tokens, "offsets": self.offsets, "labels": self.labels}, path)
        except RuntimeError as error:
            if _out_of_space(path.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from error
            raise

    @classmethod
    def load(cls, path: Path) -> EncodedSplit:
        if not path.is_file():
            raise TextclfError(f"{path}: processed data not found (run `dvc repro preprocess`)")
        data = torch.load(path, map_location="cpu", weights_only=True)
        return cls(tokens=data["tokens"], offsets=data["offsets"], labels=data["labels"])


def _out_of_space(directory: Path) -> bool:
    """Less than one block left to this user (root may also use the reserved blocks)."""
    try:
        stats = os.statvfs(directory)
    except OSError:
        return False
    free = stats.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else stats.f_bavail
    return free * stats.f_frsize < max(stats.f_bsize, 4096)


def flatten_documents(documents: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids per document -> ((T,) int64 ids concatenated, (N,) int64 tokens per document)."""
    lengths = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
    flat = np.fromiter(chain.from_iterable(documents), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


class TokenIds:
    """Numbers every distinct token in order of first appearance.

    Preprocessing turns each document into these ids as it tokenizes (one dict lookup per
    token), counts them with numpy and maps them onto the vocabulary in one array lookup,
    instead of counting strings and then looking every string up again."""

    def __init__(self) -> None:
        # A token seen for the first time gets the next number from the counter, so the lookups
        # of a whole document run in C (map over the dict) instead of a Python loop: the
        # preprocess stage took about 7% less time on the full corpus.
        self.index: defaultdict[str, int] = defaultdict(count().__next__)

    def __call__(self, tokens: Iterable[str]) -> list[int]:
        return list(map(self.index.__getitem__, tokens))

    def renumber(self, words: Sequence[str], ids: np.ndarray) -> np.ndarray:
        """``ids`` that another TokenIds gave (``words``: its tokens, in its first-seen order)
        -> the same tokens' ids here. Words new here are numbered in that order, so the result
        and this numbering are what numbering those documents here would have made."""
        mapping = np.fromiter(map(self.index.__getitem__, words), dtype=np.int64, count=len(words))
        return mapping[ids]


def stratified_holdout(
    labels: Sequence[int], fraction: float, seed: int, last: bool = False
) -> tuple[list[int], list[int]]:
    """Splits indices into (train_indices, val_indices), holding out round(fraction * n) of
    each class for validation: drawn at random (deterministic for a given seed), or with
    ``last`` each class's last ones in the order given (the seed plays no part).

    Each class keeps at least one training example.
    """
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    train_indices, val_indices = [], []
    for label in sorted(by_class):
        members = by_class[label]
        order = (
            list(reversed(range(len(members)))) if last else torch.randperm(len(members), generator=generator).tolist()
        )
        n_val = min(round(fraction * len(members)), len(members) - 1)
        val_indices.extend(members[i] for i in order[:n_val])
        train_indices.extend(members[i] for i in order[n_val:])
    return sorted(train_indices), sorted(val_indices)


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
