"""The regex encoder: words found by a regular expression, numbered by a vocabulary.

The vocabulary is learned from the training split: words seen at least ``min_freq`` times,
most frequent first (ties alphabetical), at most ``max_vocab``, after <pad> (0) and <unk> (1).
Preprocess and the served model both call ``tokenize``, so a text gets the same ids in both.

``encode`` makes the flat batch mapping of every encoder (TextEncoder.encode).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from textclf.config import PositiveInt
from textclf.data.encoded import UNK_ID, VOCAB_FILE, TokenIds, flatten_documents
from textclf.encoders.base import TextEncoder
from textclf.encoders.text import Tokenizer, clean
from textclf.errors import TextclfError


class RegexEncoder(TextEncoder):
    def __init__(
        self,
        lowercase: bool,
        token_pattern: str,
        min_freq: PositiveInt,
        max_vocab: PositiveInt | None,
        # Parts of a Usenet message to strip, like scikit-learn's `remove` for 20 Newsgroups.
        remove: list[Literal["headers", "footers", "quotes"]],
    ) -> None:
        self.lowercase = lowercase
        self.token_pattern = token_pattern
        self.min_freq = min_freq
        self.max_vocab = max_vocab
        self.remove = list(remove)
        self.tokenizer = Tokenizer(token_pattern, lowercase)
        self.vocabulary: list[str] | None = None
        self.index: dict[str, int] = {}

    def tokenize(self, text: str) -> list[str]:
        return self.tokenizer(clean(text, self.remove))

    def settings(self) -> dict[str, Any]:
        return {
            "lowercase": self.lowercase,
            "token_pattern": self.token_pattern,
            "min_freq": self.min_freq,
            "max_vocab": self.max_vocab,
            "remove": self.remove,
        }

    def fit(self, texts: Iterable[str]) -> None:
        numbering = TokenIds()
        documents = [numbering(self.tokenize(text)) for text in texts]
        self.fit_numbered(numbering, np.bincount(flatten_documents(documents)[0], minlength=len(numbering.index)))

    def fit_numbered(self, numbering: TokenIds, counts: np.ndarray) -> np.ndarray:
        """The vocabulary from tokens already numbered (``numbering``: each distinct token's
        first-seen id; ``counts``: (len(numbering.index),) occurrences in the training
        documents); returns the (len(numbering.index),) int32 map from first-seen ids to
        vocabulary ids (UNK_ID for every word left out). Preprocess numbers as it reads, so
        each token is looked up once, and maps every split with this array."""
        words = list(numbering.index)  # insertion order = first-seen id
        frequency = counts.tolist()
        kept = sorted(np.flatnonzero(counts >= self.min_freq).tolist(), key=lambda i: (-frequency[i], words[i]))
        if self.max_vocab is not None:
            kept = kept[: self.max_vocab]
        to_vocabulary = np.full(len(words), UNK_ID, dtype=np.int32)
        to_vocabulary[kept] = np.arange(UNK_ID + 1, UNK_ID + 1 + len(kept), dtype=np.int32)
        self._set_vocabulary(["<pad>", "<unk>", *(words[i] for i in kept)])
        return to_vocabulary

    def _set_vocabulary(self, vocabulary: list[str]) -> None:
        self.vocabulary = vocabulary
        self.index = {word: i for i, word in enumerate(vocabulary)}

    @property
    def vocab_size(self) -> int:
        if self.vocabulary is None:
            raise TextclfError("the regex encoder has no vocabulary yet (fit it on the training texts first)")
        return len(self.vocabulary)

    def ids(self, text: str) -> list[int]:
        """One text's token ids (UNK_ID for words outside the vocabulary)."""
        index = self.index
        return [index.get(token, UNK_ID) for token in self.tokenize(text)]

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        self.vocab_size  # noqa: B018 - raises without a vocabulary
        return [self.ids(text) for text in texts]

    def save_files(self, directory: Path) -> None:
        (directory / VOCAB_FILE).write_text("".join(f"{w}\n" for w in self.vocabulary or []), encoding="utf-8")

    def load_files(self, directory: Path) -> None:
        path = directory / VOCAB_FILE
        if not path.is_file():
            raise TextclfError(f"{path}: not found (run `dvc repro preprocess`)")
        self._set_vocabulary(path.read_text(encoding="utf-8").split("\n")[:-1])
