"""Tiny corpora of the user's own kind, built by the tests: a folder per class and tables.

Texts come from conftest's made-up groups (words of their own plus common ones), with a few
non-ASCII words, so every model family can learn them in a few epochs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from conftest import COMMON_WORDS, GROUP_WORDS

NON_ASCII = ["café", "東京", "naïve", "Zürich"]


def texts(per_class: int, seed: int = 0, classes: dict[str, list[str]] | None = None) -> list[tuple[str, str]]:
    """(label, text) pairs, ``per_class`` of each class, in a stable order."""
    rng = random.Random(seed)
    pairs = []
    for label, own in (classes or GROUP_WORDS).items():
        for _ in range(per_class):
            words = [rng.choice(own if rng.random() < 0.6 else COMMON_WORDS) for _ in range(25)]
            words.insert(rng.randrange(len(words)), rng.choice(NON_ASCII))
            pairs.append((label, " ".join(words)))
    return pairs


def write_folder(root: Path, pairs: list[tuple[str, str]], split: str | None = None) -> Path:
    """``root/[split/]<label>/<n>.txt`` in UTF-8; returns root."""
    base = root / split if split else root
    for index, (label, text) in enumerate(pairs):
        path = base / label / f"{index:04d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def write_table(
    path: Path, pairs: list[tuple[str, str]], text_column: str = "text", label_column: str = "label"
) -> Path:
    """A CSV, TSV, JSONL or Parquet file (by ``path``'s extension) of the pairs."""
    import pandas as pd

    frame = pd.DataFrame({text_column: [text for _, text in pairs], label_column: [label for label, _ in pairs]})
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".jsonl":
        path.write_text(
            "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in frame.to_dict("records")), "utf-8"
        )
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        raise ValueError(path)
    return path
