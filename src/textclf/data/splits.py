"""Which documents are train, validation and test: the source's splits, with test and validation
held out where the source has none: stratified and seeded by data.split_seed, or the last
documents of each class in source order (data.holdout).

Preprocess calls ``make_splits`` on the documents it has tokenized; ``read_held_out`` calls it
on the same source read again, for what needs the raw texts of the validation and test
documents rather than their token ids (an ensemble feeds them to members whose encoders
differ). Both depend only on the source's examples (their order, splits and labels) and on
the data.* settings, never on the encoder, so both give the same documents.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from textclf.data.encoded import stratified_holdout
from textclf.data.labels import iterative_holdout
from textclf.data.sources.base import TEST, TRAIN, VALIDATION, source_of
from textclf.errors import TextclfError

if TYPE_CHECKING:
    from textclf.config import DataConfig

# An example's split (None: the source does not split) -> its code in a (N,) uint8 array.
SPLIT_CODES = {TRAIN: 0, None: 0, VALIDATION: 1, TEST: 2}


def text_digest(text: str) -> bytes:
    """A document's 16-byte hash, of its text as the source gave it (before any cleaning)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def held_out_sha256(val: Iterable[bytes], test: Iterable[bytes]) -> str:
    """Which documents are held out, in order: the sha256 of the validation documents' text
    digests, then the test documents'. Preprocess records it (manifest.json, the run tag
    data_held_out_sha256); read_held_out computes it for the texts it reads back, so an
    ensemble tells members trained on other held-out documents (another split, document
    order or version of the source) from the data it scores."""
    hasher = hashlib.sha256()
    for name, digests in (("val", val), ("test", test)):
        hasher.update(name.encode())
        for digest in digests:
            hasher.update(digest)
    return hasher.hexdigest()


def class_order(labels: Iterable[str]) -> list[str]:
    """Sorted; numerically when every label is an integer ("2" before "10")."""
    labels = list(labels)
    if labels and all(re.fullmatch(r"[+-]?\d+", label) for label in labels):
        return sorted(labels, key=lambda label: (int(label), label))
    return sorted(labels)


def class_indices(names: list[str], codes: Iterable[int]) -> tuple[list[str], np.ndarray]:
    """Label names in first-seen order and each document's index into them -> (the classes in
    class_order, (N,) int64 each document's index into those)."""
    classes = class_order(names)
    position = {name: i for i, name in enumerate(classes)}
    renumber = np.array([position[name] for name in names], dtype=np.int64)
    return classes, renumber[np.fromiter(codes, dtype=np.int64)]


def _holdout(data: DataConfig, labels: np.ndarray, pool: np.ndarray, key: str, classes: list[str]):
    """Indices ``pool`` (ascending: source order) split into (kept, held out), data.<key> of each
    class held out: drawn by data.split_seed (data.holdout: stratified; multi-hot ``labels``
    (N, C) by iterative stratification, textclf.data.labels: a label too rare to be in both is
    a warning of check_splits, not an error), or the last in source order (last; multi-hot:
    the last documents)."""
    fraction = getattr(data, key)
    if labels.ndim == 2:
        if data.holdout == "last":
            n_held = min(round(fraction * pool.size), pool.size - 1)
            return pool[: pool.size - n_held], pool[pool.size - n_held :]
        kept, held = iterative_holdout(labels[pool], fraction, data.split_seed)
        return pool[kept], pool[held]
    counts = np.bincount(labels[pool], minlength=len(classes))
    few = np.flatnonzero((counts > 0) & (counts < 2))
    if few.size:
        name, count = classes[int(few[0])], int(counts[few[0]])
        raise TextclfError(
            f"class '{name}' has {count} document, too few to hold out a {key.split('_')[0]} split "
            f"(data.{key}={fraction}): add documents of it, or give the source its own {key.split('_')[0]} split"
        )
    kept, held = stratified_holdout(labels[pool].tolist(), fraction, data.split_seed, last=data.holdout == "last")
    return pool[kept], pool[held]


def _how(data: DataConfig, key: str) -> str:
    """-> how a held-out split was made, as manifest.json's ``splits`` records it."""
    drawn = f"data.split_seed={data.split_seed}" if data.holdout == "stratified" else "data.holdout=last"
    return f"held out: data.{key}={getattr(data, key)}, {drawn}"


@dataclass(frozen=True)
class Splits:
    train: np.ndarray  # document indices, ascending
    val: np.ndarray
    test: np.ndarray
    how: dict[str, str]  # per split: "source" or the hold-out that made it


def make_splits(codes: np.ndarray, label_ids: np.ndarray, data: DataConfig, classes: list[str]) -> Splits:
    """(N,) uint8 SPLIT_CODES and (N,) int64 class indices (or (N, C) multi-hot labels) of the
    documents in source order -> the source's splits, with test and validation held out where
    it has none."""
    pool, val, test = (np.flatnonzero(codes == code) for code in (0, 1, 2))
    how = {"train": "source", "val": "source", "test": "source"}
    if test.size == 0:
        pool, test = _holdout(data, label_ids, pool, "test_fraction", classes)
        how["test"] = _how(data, "test_fraction")
    if val.size == 0:
        pool, val = _holdout(data, label_ids, pool, "val_fraction", classes)
        how["val"] = _how(data, "val_fraction")
        if val.size == 0:
            per_class = label_ids[pool].sum(axis=0) if label_ids.ndim == 2 else np.bincount(label_ids[pool])
            largest = int(per_class.max())
            raise TextclfError(
                f"data.val_fraction={data.val_fraction} holds out no validation document from {pool.size} "
                f"training documents in {len(classes)} classes (at most {largest} per class); "
                f"set data.val_fraction to at least {1 / largest:.2g}"
            )
    return Splits(np.sort(pool), np.sort(val), np.sort(test), how)


@dataclass(frozen=True)
class HeldOut:
    """The validation and test documents as raw texts, in source order."""

    classes: list[str]  # class i's name, as preprocess orders them (labels.json)
    texts: dict[str, list[str]]  # "val", "test" -> the documents' texts
    labels: dict[str, np.ndarray]  # "val", "test" -> (N,) int64 class indices
    sha256: str  # held_out_sha256 of the texts, as preprocess records it


def read_held_out(data: DataConfig, raw_dir: Path) -> HeldOut:
    """The validation and test documents preprocess writes for ``data`` (``raw_dir``: what the
    download stage wrote for it), as raw texts. The source is read twice, so no text of the
    training documents is ever held: once for every document's split and label (make_splits
    needs them all to hold documents out), once for the chosen texts; a source yields the same
    examples in the same order every time (DataSource.read)."""
    source = source_of(data)
    names: list[str] = []
    index: dict[str, int] = {}
    codes, label_codes = bytearray(), []
    for example in source.read(raw_dir):
        label_codes.append(index.setdefault(example.label, len(index)))
        if len(index) > len(names):
            names.append(example.label)
        codes.append(SPLIT_CODES[example.split])
    classes, label_ids = class_indices(names, label_codes)
    splits = make_splits(np.frombuffer(bytes(codes), dtype=np.uint8), label_ids, data, classes)
    chosen = dict.fromkeys(splits.val.tolist(), "val") | dict.fromkeys(splits.test.tolist(), "test")
    texts: dict[str, list[str]] = {"val": [], "test": []}
    count = 0
    for count, example in enumerate(source.read(raw_dir), start=1):
        split = chosen.get(count - 1)
        if split is not None:
            texts[split].append(example.text)
    if count != len(label_codes):
        raise TextclfError(
            f"{raw_dir}: the source gave {len(label_codes)} documents, then {count}: it changed while read"
        )
    sha256 = held_out_sha256(map(text_digest, texts["val"]), map(text_digest, texts["test"]))
    return HeldOut(classes, texts, {"val": label_ids[splits.val], "test": label_ids[splits.test]}, sha256)
