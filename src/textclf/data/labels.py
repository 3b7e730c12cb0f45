"""Multi-label data: which kind of labels a corpus has, its label matrix, and its hold-outs.

A source's examples carry one label each (a string) or a set of labels (a tuple of names, ()
for a text with none: textclf.data.sources.base.Example). ``checked_kinds`` makes sure a corpus
holds one kind only, as ``data.multi_label`` allows (auto: whichever the first example has;
true: single labels become one-label sets; false: a list is an error). Preprocess then stores a
multi-label corpus as an (N, C) uint8 multi-hot matrix (textclf.data.encoded) instead of (N,)
class indices, and holds its test and validation documents out by iterative stratification
(``iterative_holdout``), which keeps each label's share of documents in each split as far as
its count allows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from textclf.data.sources.base import Example
from textclf.errors import TextclfError


def is_multi_label(example: Example) -> bool:
    return isinstance(example.label, tuple)


def checked_kinds(examples: Iterable[Example], multi_label: str | bool) -> Iterator[Example]:
    """``examples`` as read, each checked to be of the kind the first one is (one label, or a
    list of them), and against ``multi_label`` (data.multi_label: "auto", True or False); with
    True, a single label ``"a"`` becomes the set ``("a",)``. One line naming the row otherwise."""
    first: Example | None = None
    for example in examples:
        listed = is_multi_label(example)
        if listed and multi_label is False:
            raise TextclfError(
                f"{example.origin}: its label is a list {list(example.label)!r} (a list in the data, or a value "
                "data.label_separator split), and data.multi_label=false: set data.multi_label=auto to train a "
                "multi-label model, or give each text one label"
            )
        if first is None:
            first = example
        elif listed != is_multi_label(first):
            kinds = {True: "a list of labels", False: "a single label"}
            raise TextclfError(
                f"{example.origin}: the label column mixes lists and single labels ({kinds[listed]} here, "
                f"{kinds[not listed]} at {first.origin}): write every row's labels as a list ([] for none), "
                "or one label per row"
            )
        if multi_label is True and not listed:
            example = dataclasses.replace(example, label=(example.label,))
        yield example


def multi_hot(names: list[str], label_sets: Sequence[tuple[int, ...]], classes: list[str]) -> np.ndarray:
    """Each document's labels as indices into ``names`` (first-seen order) -> (N, C) uint8, row
    i holding a 1 in the column of each label of document i, columns in the order of ``classes``."""
    position = {name: i for i, name in enumerate(classes)}
    renumber = np.array([position[name] for name in names], dtype=np.int64)
    matrix = np.zeros((len(label_sets), len(classes)), dtype=np.uint8)
    rows = np.repeat(np.arange(len(label_sets)), [len(labels) for labels in label_sets])
    columns = np.fromiter((code for labels in label_sets for code in labels), dtype=np.int64, count=rows.size)
    matrix[rows, renumber[columns]] = 1
    return matrix


def iterative_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, C) 0/1 labels -> (kept, held out) ascending row indices, about ``fraction`` of the
    rows held out, and of each label's rows: iterative stratification (Sechidis, Tsoumakas and
    Vlahavas, 2011) into two subsets. The rarest label still to place goes first: each of its
    rows joins the subset that wants most of that label (then the one that wants most rows; a
    seeded draw breaks remaining ties), and the row's other labels count as placed too. Rows
    without a label fill the subsets up to their sizes. A label of one row stays in the kept
    subset (it wants 1 - fraction of it, more than fraction < 0.5). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    members = labels.astype(bool)
    n = members.shape[0]
    shares = np.array([1.0 - fraction, fraction])
    wanted_rows = shares * n  # (2,) rows each subset still wants
    wanted = shares[:, None] * members.sum(axis=0)[None, :]  # (2, C) rows of each label still wanted
    remaining = members.sum(axis=0).astype(np.int64)  # (C,) rows of each label not yet placed
    placed = np.full(n, -1, dtype=np.int64)

    def place(row: int, subset: int) -> None:
        placed[row] = subset
        wanted_rows[subset] -= 1
        wanted[subset] -= members[row]
        remaining[:] -= members[row]

    while remaining.any():
        label = int(np.flatnonzero(remaining == remaining[remaining > 0].min())[0])  # the rarest left
        rows = np.flatnonzero(members[:, label] & (placed < 0))
        for row in rng.permutation(rows).tolist():
            most = np.flatnonzero(wanted[:, label] == wanted[:, label].max())
            if most.size > 1:
                most = most[wanted_rows[most] == wanted_rows[most].max()]
            place(row, int(most[0] if most.size == 1 else rng.choice(most)))
    for row in rng.permutation(np.flatnonzero(placed < 0)).tolist():  # texts with no label
        most = np.flatnonzero(wanted_rows == wanted_rows.max())
        place(row, int(most[0] if most.size == 1 else rng.choice(most)))
    return np.flatnonzero(placed == 0), np.flatnonzero(placed == 1)


def present(labels: np.ndarray, rows: np.ndarray) -> set[int]:
    """The classes documents ``rows`` carry: ``labels`` (N,) class indices or (N, C) multi-hot."""
    if labels.ndim == 2:
        return set(np.flatnonzero(labels[rows].any(axis=0)).tolist())
    return set(labels[rows].tolist())
