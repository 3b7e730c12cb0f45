"""The regex encoder: words found by a regular expression, numbered by a vocabulary learned
from the training split (textclf.encoders.vocabulary).

``encode`` makes the flat batch mapping of every encoder (TextEncoder.encode).
"""

from __future__ import annotations

from typing import Any, Literal

from textclf.config import PositiveInt
from textclf.encoders.text import Tokenizer, clean
from textclf.encoders.vocabulary import VocabularyEncoder


class RegexEncoder(VocabularyEncoder):
    def __init__(
        self,
        lowercase: bool,
        token_pattern: str,
        min_freq: PositiveInt,
        max_vocab: PositiveInt | None,
        # Parts of a Usenet message to strip, like scikit-learn's `remove` for 20 Newsgroups.
        remove: list[Literal["headers", "footers", "quotes"]],
    ) -> None:
        super().__init__(lowercase, token_pattern, min_freq, max_vocab, remove)
        self.tokenizer = Tokenizer(token_pattern, lowercase)

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
