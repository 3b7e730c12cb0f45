"""The n-gram encoder: word n-grams and character n-grams within word boundaries, numbered by a
vocabulary learned from the training split (textclf.encoders.vocabulary), for a linear model
over TF-IDF features (models/linear.py).

The features of a text are scikit-learn's ``TfidfVectorizer(analyzer="word", ngram_range=
word_ngrams)`` and ``analyzer="char_wb", ngram_range=char_ngrams`` analyzers' tokens, in that
order (tests/test_linear.py compares them): the word n-grams of the words ``token_pattern``
finds, joined by a space, then for each whitespace-separated word, padded with a space on
either side, its character n-grams. Each is repeated per occurrence, so the flat ids
(data/encoded.py) carry the term frequencies the model's TF-IDF weights are computed from.
A character n-gram is written with a leading tab (CHAR_MARK), so "ab" the word and "ab" the
characters are two features, as in scikit-learn's union of two vectorizers: no character
n-gram holds whitespace inside it, and a token pattern that finds no whitespace makes no
word n-gram that starts with a tab.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator

from textclf.config import PositiveInt
from textclf.encoders.text import Tokenizer, clean
from textclf.encoders.vocabulary import VocabularyEncoder
from textclf.errors import TextclfError

CHAR_MARK = "\t"
# Distinct words whose character n-grams are kept ready (about 20 n-gram strings each): a word
# seen again costs one dict lookup instead of ~20 slices. Emptied when full (bounds memory).
CHAR_CACHE_WORDS = 1 << 18
_WHITE_SPACES = re.compile(r"\s\s+")  # scikit-learn's, which char_wb applies first


def _ordered(value: tuple[int, int]) -> tuple[int, int]:
    if value[0] > value[1]:
        raise ValueError(f"the smallest n comes first: [{value[1]}, {value[0]}]")
    return value


# [min_n, max_n], both included, as scikit-learn's ngram_range.
NgramRange = Annotated[tuple[PositiveInt, PositiveInt], AfterValidator(_ordered)]


def word_ngrams(tokens: list[str], low: int, high: int) -> list[str]:
    """scikit-learn's ``_word_ngrams``: for n from low to high, every run of n tokens, joined by a space."""
    grams = list(tokens) if low == 1 else []
    for n in range(max(low, 2), min(high, len(tokens)) + 1):
        grams += [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return grams


def char_wb_ngrams(word: str, low: int, high: int) -> list[str]:
    """scikit-learn's ``_char_wb_ngrams`` of one word: n from low to high over " word "; a
    word padded to no more than n characters gives itself once, and no longer n-grams."""
    padded = f" {word} "
    grams = []
    for n in range(low, high + 1):
        grams += [padded[i : i + n] for i in range(max(len(padded) - n + 1, 1))]
        if len(padded) <= n:
            break
    return grams


class NgramEncoder(VocabularyEncoder):
    unordered = True  # a bag of n-grams: each document's ids are written in ascending order

    def __init__(
        self,
        lowercase: bool,
        token_pattern: str,
        word_ngrams: NgramRange | None,
        char_ngrams: NgramRange | None,
        min_freq: PositiveInt,
        max_vocab: PositiveInt | None,
        # Parts of a Usenet message to strip, like scikit-learn's `remove` for 20 Newsgroups.
        remove: list[Literal["headers", "footers", "quotes"]],
    ) -> None:
        super().__init__(lowercase, token_pattern, min_freq, max_vocab, remove)
        # YAML gives lists; validated as NgramRange (ordered, positive) by config.validate.
        self.word_ngrams = tuple(word_ngrams) if word_ngrams is not None else None
        self.char_ngrams = tuple(char_ngrams) if char_ngrams is not None else None
        if word_ngrams is None and char_ngrams is None:
            raise TextclfError(
                "encoder.word_ngrams and encoder.char_ngrams are both null: set at least one (e.g. [1, 2])"
            )
        self.tokenizer = Tokenizer(token_pattern, lowercase=False)  # tokenize lowercases first, once for both
        self._char_cache: dict[str, list[str]] = {}

    def tokenize(self, text: str) -> list[str]:
        text = clean(text, self.remove)
        if self.lowercase:
            text = text.lower()
        features = []
        if self.word_ngrams is not None:
            features = word_ngrams(self.tokenizer(text), *self.word_ngrams)
        if self.char_ngrams is not None:
            cache, (low, high) = self._char_cache, self.char_ngrams
            for word in _WHITE_SPACES.sub(" ", text).split():
                grams = cache.get(word)
                if grams is None:
                    if len(cache) >= CHAR_CACHE_WORDS:
                        cache.clear()
                    grams = cache[word] = [CHAR_MARK + gram for gram in char_wb_ngrams(word, low, high)]
                features += grams
        return features

    def display_tokens(self, ids: list[int]) -> list[str]:
        """A word n-gram as it is ("rocket launch"); a character n-gram in quotes, the spaces
        that pad its word shown as "_" ('_roc', 'et_'), so it reads apart from a word."""
        shown = super().display_tokens(ids)
        return [f"'{token[1:].replace(' ', '_')}'" if token.startswith(CHAR_MARK) else token for token in shown]

    def settings(self) -> dict[str, Any]:
        return {
            "lowercase": self.lowercase,
            "token_pattern": self.token_pattern,
            "word_ngrams": list(self.word_ngrams) if self.word_ngrams is not None else None,
            "char_ngrams": list(self.char_ngrams) if self.char_ngrams is not None else None,
            "min_freq": self.min_freq,
            "max_vocab": self.max_vocab,
            "remove": self.remove,
        }
