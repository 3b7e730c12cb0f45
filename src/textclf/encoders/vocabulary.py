"""Encoders that learn a vocabulary: text -> tokens (strings) -> ids numbered by the training split.

The vocabulary is the tokens seen at least ``min_freq`` times in the training split, most
frequent first (ties alphabetical), at most ``max_vocab``, after <pad> (0) and <unk> (1).
A subclass says what a token is (``tokenize``: the regex encoder's words, the n-gram
encoder's word and character n-grams); preprocess numbers the tokens as it reads, in as many
processes as it has (``tokenize`` is all a worker calls), then maps them onto the vocabulary
with the array ``fit_numbered`` returns. Preprocess and the served model both call
``tokenize``, so a text gets the same ids in both.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from textclf.data.encoded import PAD_ID, UNK_ID, VOCAB_FILE, TokenIds, flatten_documents
from textclf.encoders.base import TextEncoder
from textclf.errors import TextclfError


class VocabularyEncoder(TextEncoder):
    def __init__(
        self, lowercase: bool, token_pattern: str, min_freq: int, max_vocab: int | None, remove: list[str]
    ) -> None:
        """The settings every vocabulary encoder shares (a subclass's constructor declares and
        types them, for the config check, and passes them on)."""
        self.lowercase = lowercase
        self.token_pattern = token_pattern
        self.min_freq = min_freq
        self.max_vocab = max_vocab
        self.remove = list(remove)  # parts of a Usenet message to strip (encoders.text.clean)
        self.vocabulary: list[str] | None = None
        self.index: dict[str, int] = {}

    @abstractmethod
    def tokenize(self, text: str) -> list[str]:
        """One text's tokens, in order, repeated per occurrence (so counts are term frequencies)."""

    def fit(self, texts: Iterable[str]) -> None:
        numbering = TokenIds()
        documents = [numbering(self.tokenize(text)) for text in texts]
        self.fit_numbered(numbering, np.bincount(flatten_documents(documents)[0], minlength=len(numbering.index)))

    def fit_numbered(self, numbering: TokenIds, counts: np.ndarray) -> np.ndarray:
        """The vocabulary from tokens already numbered (``numbering``: each distinct token's
        first-seen id; ``counts``: (len(numbering.index),) occurrences in the training
        documents); returns the (len(numbering.index),) int32 map from first-seen ids to
        vocabulary ids (UNK_ID for every token left out). Preprocess numbers as it reads, so
        each token is looked up once, and maps every split with this array."""
        words = list(numbering.index)  # insertion order = first-seen id
        kept = np.flatnonzero(counts >= self.min_freq)
        # Most frequent first, ties alphabetical: sort by word, then (stably) by -count.
        kept = kept[np.argsort(np.array([words[i] for i in kept.tolist()], dtype=object), kind="stable")]
        kept = kept[np.argsort(-counts[kept], kind="stable")]
        if self.max_vocab is not None:
            kept = kept[: self.max_vocab]
        to_vocabulary = np.full(len(words), UNK_ID, dtype=np.int32)
        to_vocabulary[kept] = np.arange(UNK_ID + 1, UNK_ID + 1 + len(kept), dtype=np.int32)
        self._set_vocabulary(["<pad>", "<unk>", *(words[i] for i in kept.tolist())])
        return to_vocabulary

    def _set_vocabulary(self, vocabulary: list[str]) -> None:
        self.vocabulary = vocabulary
        self.index = {word: i for i, word in enumerate(vocabulary)}

    @property
    def vocab_size(self) -> int:
        if self.vocabulary is None:
            raise TextclfError(f"the {self.name} encoder has no vocabulary yet (fit it on the training texts first)")
        return len(self.vocabulary)

    @property
    def name(self) -> str:
        """As the encoder is chosen: conf/encoder/<name>.yaml."""
        return type(self).__module__.rsplit(".", 1)[-1]

    def ids(self, text: str) -> list[int]:
        """One text's token ids (UNK_ID for tokens outside the vocabulary)."""
        index = self.index
        return [index.get(token, UNK_ID) for token in self.tokenize(text)]

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        self.vocab_size  # noqa: B018 - raises without a vocabulary
        if self.unordered:  # ascending, as preprocess writes them (TextEncoder.unordered)
            return [sorted(self.ids(text)) for text in texts]
        return [self.ids(text) for text in texts]

    def display_tokens(self, ids: list[int]) -> list[str]:
        self.vocab_size  # noqa: B018 - raises without a vocabulary
        vocabulary = self.vocabulary
        return [vocabulary[i] if 0 <= i < len(vocabulary) else f"<id {i}>" for i in ids]

    def placeholder_ids(self) -> set[int]:
        return {PAD_ID, UNK_ID}

    def save_files(self, directory: Path) -> None:
        (directory / VOCAB_FILE).write_text("".join(f"{w}\n" for w in self.vocabulary or []), encoding="utf-8")

    def load_files(self, directory: Path) -> None:
        path = directory / VOCAB_FILE
        if not path.is_file():
            raise TextclfError(f"{path}: not found (run `dvc repro preprocess`)")
        self._set_vocabulary(path.read_text(encoding="utf-8").split("\n")[:-1])
