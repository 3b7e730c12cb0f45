"""What a text encoder is, and loading a saved one (preprocess saves it; serving loads it).

An encoder turns texts into token ids, and those into the batch mapping a backbone takes. The
regex and n-gram encoders learn a vocabulary from the training split (``fit``; ``learns_vocabulary``); a
pretrained tokenizer (textclf.encoders.hf) learns nothing: its ids are final, so preprocess
takes them from ``token_ids`` as it reads and writes them as they are.
``save`` writes ``encoder.json`` (its ``_target_`` and settings) and its own files into a
directory; ``load_encoder`` rebuilds it from there, building only a class named in
config.TARGETS["encoder"] (a shipped model's files are data, never code to run).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from textclf.data.encoded import EncodedSplit
from textclf.errors import TextclfError

if TYPE_CHECKING:
    from textclf.config import Config

ENCODER_FILE = "encoder.json"


class TextEncoder(ABC):
    # Distribution names the encoder needs at prediction time, beyond the served model's own
    # (serving.REQUIREMENTS): pinned in the shipped model's requirements.
    requirements: ClassVar[tuple[str, ...]] = ()
    # True when a document's ids are a bag, whose order carries nothing (the n-gram encoder's):
    # preprocess and ``token_ids`` then give each document's ids in ascending order, which lets
    # a model count them in one pass instead of a sort (models/linear.py).
    unordered: ClassVar[bool] = False

    @property
    def learns_vocabulary(self) -> bool:
        """True when ``fit`` numbers the tokens from the training texts (preprocess then numbers
        them as it reads: a VocabularyEncoder's ``tokenize`` and ``fit_numbered``, see
        textclf.encoders.vocabulary); False when the
        ids of ``token_ids`` are final (a pretrained tokenizer's: ``fit`` does nothing)."""
        return True

    def prepare(self) -> None:  # noqa: B027 - optional: an encoder that learns reads nothing
        """Reads what the encoder starts from (a pretrained tokenizer's files), failing in one
        line if it cannot; ``build_encoder`` calls it, before any document is read."""

    @abstractmethod
    def fit(self, texts: Iterable[str]) -> None:
        """Learns what encoding needs from the training texts (a vocabulary)."""

    @abstractmethod
    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, as the model takes them (fitted first, if it learns)."""

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Texts -> the flat batch mapping every encoder makes, so no document is padded:
        tokens  (T,) int64  every document's ids, concatenated
        offsets (B,) int64  where each document starts in tokens
        lengths (B,) int64  tokens per document"""
        split = EncodedSplit.from_token_ids(self.token_ids(texts), [0] * len(texts))
        return {"tokens": split.tokens.long(), "offsets": split.offsets[:-1], "lengths": split.lengths}

    @abstractmethod
    def display_tokens(self, ids: list[int]) -> list[str]:
        """Each id as users read it (textclf.explain's tables, the run report's documents), one
        string per id: the vocabulary's word, a
        character n-gram in quotes, a pretrained tokenizer's token (``##ing``, ``[CLS]``)."""

    @abstractmethod
    def placeholder_ids(self) -> set[int]:
        """The ids that stand for no word of the text: <pad> and <unk> of a vocabulary, a
        pretrained tokenizer's special tokens ([CLS], [SEP], [PAD], [UNK]). A text whose ids
        are all placeholders has nothing to explain."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Rows of the embedding table a backbone needs for these ids."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The constructor arguments (what conf/encoder/<name>.yaml set)."""

    @abstractmethod
    def save_files(self, directory: Path) -> None:
        """Writes the encoder's learned state (a vocabulary file) into ``directory``."""

    @abstractmethod
    def load_files(self, directory: Path) -> None:
        """Reads back the learned state ``save_files`` wrote into ``directory``."""

    def description(self) -> dict[str, Any]:
        """Its ``_target_`` and settings: what ``save`` writes to encoder.json, and builds it again."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", **self.settings()}

    def save(self, directory: Path) -> None:
        (directory / ENCODER_FILE).write_text(json.dumps(self.description(), indent=2) + "\n", encoding="utf-8")
        self.save_files(directory)


def build_encoder(cfg: Config) -> TextEncoder:
    """The encoder ``cfg.encoder`` names, prepared (``TextEncoder.prepare``), not fitted."""
    from textclf.config import build

    encoder = build("encoder", cfg.encoder)
    encoder.prepare()
    return encoder


def load_encoder(directory: Path) -> TextEncoder:
    """The encoder saved in ``directory`` (``TextEncoder.save``)."""
    from textclf.config import TARGETS

    path = directory / ENCODER_FILE
    if not path.is_file():
        raise TextclfError(f"{path}: not found (run `dvc repro preprocess`)")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TextclfError(f"{path}: not valid JSON ({error})") from None
    target = description.pop("_target_", None) if isinstance(description, dict) else None
    if target not in TARGETS["encoder"]:
        raise TextclfError(
            f"{path}: refusing to build encoder {target!r} (not one of: {', '.join(TARGETS['encoder'])})"
        )
    from textclf.config import _check_target_section, build

    # The settings are checked as conf/encoder/*.yaml is: against the constructor's signature.
    problems = _check_target_section("encoder", {"_target_": target, **description})
    if problems:
        raise TextclfError(f"{path}: " + "; ".join(problems))
    encoder = build("encoder", {"_target_": target, **description})
    encoder.load_files(directory)
    return encoder
