"""A pretrained model's own tokenizer as the text encoder (conf/encoder/hf.yaml, chosen by model=hf).

Its ids are final: the vocabulary is the model's, so ``fit`` learns nothing and preprocess
writes ``token_ids`` as they are, special tokens included ([CLS] ... [SEP] for BERT) and each
document already cut (``truncation``):

  head       the first tokens, max_len in all
  head_tail  the first and the last ones, a quarter and three quarters of what fits (Sun et
             al. 2019, "How to Fine-Tune BERT for Text Classification": the first 128 and the
             last 382 of 510 did best on long documents); at max_len 512, exactly those
  chunks     up to ``max_chunks`` consecutive windows of the text's tokens, one after the other,
             each with the special tokens the tokenizer puts around a document ([CLS] window
             [SEP]), so each window is max_len tokens long but the last, which may be shorter;
             the windows do not overlap. The model (models/hf.py) cuts a document back into its
             windows by max_len alone and averages their pooled states.

The special tokens are kept wherever the tokenizer puts them; only the text's tokens are cut.
``save_files`` writes the tokenizer (save_pretrained) into ``tokenizer/``, from which the
served model loads it: neither the original directory nor the network is needed there.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from textclf.config import PositiveInt
from textclf.encoders.base import TextEncoder
from textclf.errors import TextclfError, first_line
from textclf.pretrained import check_max_len, load_config, load_tokenizer

if TYPE_CHECKING:
    import tokenizers
    from transformers import PreTrainedTokenizerBase

TOKENIZER_DIR = "tokenizer"  # beside encoder.json: the tokenizer's files (save_pretrained)
# head_tail: the head's share of the text tokens kept (Sun et al. 2019: 128 of 510).
HEAD_SHARE = 128 / 510


class HuggingFaceTokenizer(TextEncoder):
    requirements = ("transformers", "tokenizers", "safetensors")

    def __init__(
        self,
        name: str,
        max_len: PositiveInt,
        truncation: Literal["head", "head_tail", "chunks"],
        max_chunks: PositiveInt,  # windows kept per document (truncation=chunks)
    ) -> None:
        # Cheap, as every encoder's constructor: the files are read by prepare (or load_files).
        self.name = name
        self.max_len = max_len
        self.truncation = truncation
        self.max_chunks = max_chunks
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self._backend: tokenizers.Tokenizer | None = None  # its Rust tokenizer, without truncation
        self._windows: tokenizers.Tokenizer | None = None  # chunks: the same, cutting max_len windows

    @property
    def learns_vocabulary(self) -> bool:
        return False

    def settings(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_len": self.max_len,
            "truncation": self.truncation,
            "max_chunks": self.max_chunks,
        }

    def prepare(self) -> None:
        if self.tokenizer is None:
            tokenizer = load_tokenizer(self.name)
            check_max_len(self.name, self.max_len, load_config(self.name))
            self._use(tokenizer, f"model.name={self.name!r}")

    def _use(self, tokenizer: PreTrainedTokenizerBase, what: str) -> None:
        from tokenizers import Tokenizer

        # A copy, so the tokenizer saved is the one loaded: tokenizer.json may carry a truncation
        # of its own (sentence-transformers' say 128 tokens), which the copy drops (max_len rules).
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_truncation()
        backend.no_padding()
        special = len(backend.encode("", add_special_tokens=True).ids)
        if self.max_len <= special:
            raise TextclfError(
                f"model.max_len={self.max_len}: {what}'s tokenizer adds {special} special tokens to every "
                f"document, so max_len must be at least {special + 1}"
            )
        self.tokenizer, self._backend = tokenizer, backend
        if self.truncation == "chunks":
            # The tokenizer's own overflow: windows of max_len tokens, its special tokens counted,
            # each post-processed with them (the template, whatever the model: [CLS] $A [SEP],
            # <s> $A </s>); stride 0, so no text token is in two windows.
            self._windows = Tokenizer.from_str(backend.to_str())
            self._windows.enable_truncation(max_length=self.max_len, stride=0, direction="right")

    def fit(self, texts: Iterable[str]) -> None:
        """Nothing to learn: the vocabulary is the pretrained model's."""
        self.prepare()

    @property
    def vocab_size(self) -> int:
        self.prepare()
        return len(self.tokenizer)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        self.prepare()
        if self.truncation == "chunks":
            encodings = self._windows.encode_batch(texts, add_special_tokens=True)  # the first window of each
            return [self._chunked(encoding) for encoding in encodings]
        encodings = self._backend.encode_batch(texts, add_special_tokens=True)  # in Rust, on its own threads
        return [self._truncated(encoding.ids, encoding.special_tokens_mask) for encoding in encodings]

    def _chunked(self, first: tokenizers.Encoding) -> list[int]:
        """The ids of a document's first ``max_chunks`` windows, one after the other (the first
        window's encoding holds the others, in order, as its ``overflowing``)."""
        windows = [first, *first.overflowing][: self.max_chunks]
        return [token for window in windows for token in window.ids]

    def _truncated(self, ids: list[int], special: list[int]) -> list[int]:
        """``ids`` with text tokens dropped from the middle (head_tail) or the end (head) until
        ``max_len`` are left; the special tokens are all kept."""
        if len(ids) <= self.max_len:
            return ids
        text = np.flatnonzero(np.asarray(special) == 0)  # positions of the text's tokens
        budget = self.max_len - (len(ids) - text.size)
        head = budget if self.truncation == "head" else round(budget * HEAD_SHARE)
        keep = np.ones(len(ids), dtype=bool)
        keep[text[head : text.size - (budget - head)]] = False
        return np.asarray(ids)[keep].tolist()

    def display_tokens(self, ids: list[int]) -> list[str]:
        """The tokenizer's own pieces (``Ġword``, ``##ing``, ``[CLS]``), one per id."""
        self.prepare()
        return self.tokenizer.convert_ids_to_tokens(ids)

    def placeholder_ids(self) -> set[int]:
        self.prepare()
        return set(self.tokenizer.all_special_ids)

    def save_files(self, directory: Path) -> None:
        self.prepare()
        self.tokenizer.save_pretrained(directory / TOKENIZER_DIR)

    def load_files(self, directory: Path) -> None:
        from transformers import AutoTokenizer

        path = directory / TOKENIZER_DIR
        if not path.is_dir():
            raise TextclfError(f"{path}: not found (run `dvc repro preprocess`)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as error:
            raise TextclfError(f"{path}: cannot load the tokenizer ({first_line(error)})") from None
        self._use(tokenizer, str(path))
