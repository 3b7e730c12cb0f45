"""What a text encoder is, and loading a saved one (preprocess saves it; serving loads it).

An encoder turns texts into the batch mapping a backbone takes. The regex encoder learns a
vocabulary from the training split (``fit``); a pretrained tokenizer would learn nothing.
``save`` writes ``encoder.json`` (its ``_target_`` and settings) and its own files into a
directory; ``load_encoder`` rebuilds it from there, building only a class named in
config.TARGETS["encoder"] (a shipped model's files are data, never code to run).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from textclf.errors import TextclfError

if TYPE_CHECKING:
    from textclf.config import Config

ENCODER_FILE = "encoder.json"


class TextEncoder(ABC):
    @abstractmethod
    def fit(self, texts: Iterable[str]) -> None:
        """Learns what encoding needs from the training texts (a vocabulary)."""

    @abstractmethod
    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Texts -> the batch mapping (see the encoder for its keys and shapes)."""

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

    @classmethod
    @abstractmethod
    def load_files(cls, directory: Path, settings: dict[str, Any]) -> TextEncoder:
        """The encoder ``save`` wrote into ``directory``, from its ``settings``."""

    def save(self, directory: Path) -> None:
        target = f"{type(self).__module__}.{type(self).__qualname__}"
        description = {"_target_": target, **self.settings()}
        (directory / ENCODER_FILE).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
        self.save_files(directory)


def build_encoder(cfg: Config) -> TextEncoder:
    """The encoder ``cfg.encoder`` names (not fitted)."""
    from textclf.config import build

    return build("encoder", cfg.encoder)


def load_encoder(directory: Path) -> TextEncoder:
    """The encoder saved in ``directory`` (``TextEncoder.save``)."""
    from hydra.utils import get_object

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
    return get_object(target).load_files(directory, description)
