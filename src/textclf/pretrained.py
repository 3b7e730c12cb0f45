"""Finding a pretrained Hugging Face model: its config, its tokenizer and its weights, offline.

``model.name`` is a local directory (config.json, the tokenizer files, the weights) or a Hub id.
Everything here is read with ``trust_remote_code=False`` (a model's files are data, never code
to run), and every failure is one line naming ``model.name`` and what to do: a Hub id that is
not cached fails so when the Hub is out of reach (``HF_HUB_OFFLINE=1`` or no network).

The tokenizer (textclf.encoders.hf) and the backbone (textclf.models.hf) both come from here,
so preprocess, train and evaluate read the same files in the same way. transformers is
imported inside the functions: validating a config imports this module, and should not pay
for transformers' import (about 2 s) unless a pretrained model is used.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textclf.errors import TextclfError, first_line

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

# The files a tokenizer can be loaded from: tokenizer.json (a fast tokenizer, what
# save_pretrained writes) or the vocabulary files transformers converts to one.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
# Models whose position ids start after the padding id (RoBERTa's scheme): the first
# ``pad_token_id + 1`` rows of their position table are never used for a token.
_POSITIONS_AFTER_PADDING = frozenset({"roberta", "xlm-roberta", "camembert", "mpnet", "longformer"})
# Config keys that describe where a model came from rather than what it is.
_PROVENANCE_KEYS = ("_name_or_path", "transformers_version")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _local(name: str) -> Path | None:
    path = Path(name).expanduser()
    return path if path.is_dir() else None


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _not_found(name: str, error: BaseException) -> TextclfError:
    if _looks_like_path(name):
        return TextclfError(f"model.name={name!r}: no such directory (point model.name at a local copy of the model)")
    where = "offline (HF_HUB_OFFLINE=1 or no network)" if _offline() else first_line(error)
    return TextclfError(
        f"model.name={name!r}: not a local directory, and not a Hub model in the Hugging Face cache, {where}: "
        "point model.name at a local copy of the model (a directory with config.json and its tokenizer files)"
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers without its progress bars and warnings (restored after)."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def load_config(name: str) -> PretrainedConfig:
    """The model's configuration (config.json), read from ``name``."""
    from transformers import AutoConfig

    try:
        with _quiet():
            return AutoConfig.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as error:
        local = _local(name)
        if local is not None and not (local / "config.json").is_file():
            raise TextclfError(
                f"model.name={name!r}: no config.json in the directory (save the model there with save_pretrained)"
            ) from None
        if local is not None:  # config.json there, but not one transformers knows
            raise TextclfError(f"model.name={name!r}: not a model transformers knows ({first_line(error)})") from None
        raise _not_found(name, error) from None


def architecture(config: PretrainedConfig) -> dict[str, Any]:
    """``config`` as plain JSON data (what rebuilds the model without its files), less the keys
    that say where it was loaded from."""
    values = json.loads(config.to_json_string(use_diff=False))
    return {key: value for key, value in values.items() if key not in _PROVENANCE_KEYS}


def config_from_architecture(values: dict[str, Any]) -> PretrainedConfig:
    """The configuration ``architecture`` recorded (a class of transformers' own, by model_type)."""
    from transformers import CONFIG_MAPPING

    model_type = values.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise TextclfError(f"model.architecture: model_type {model_type!r} is not a model transformers knows")
    return CONFIG_MAPPING[model_type].from_dict(dict(values))


def position_limit(config: PretrainedConfig) -> int | None:
    """Tokens per document the model's position embeddings hold (None: no fixed limit)."""
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    if config.model_type in _POSITIONS_AFTER_PADDING and isinstance(config.pad_token_id, int):
        limit -= config.pad_token_id + 1
    return limit


def check_max_len(name: str, max_len: int, config: PretrainedConfig) -> None:
    limit = position_limit(config)
    if limit is not None and max_len > limit:
        raise TextclfError(
            f"model.max_len={max_len} is beyond the {limit} positions the model's position embeddings hold "
            f"(model.name={name!r}): set model.max_len to at most {limit}"
        )


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The model's fast tokenizer, read from ``name`` (a directory must hold its files)."""
    from transformers import AutoTokenizer

    local = _local(name)
    if local is not None and not any((local / file).is_file() for file in TOKENIZER_FILES):
        raise TextclfError(
            f"model.name={name!r}: no tokenizer files in the directory (one of {', '.join(TOKENIZER_FILES)}): "
            "save the model's tokenizer there too (tokenizer.save_pretrained)"
        )
    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError, KeyError, ImportError) as error:
        if local is not None:
            raise TextclfError(f"model.name={name!r}: cannot load its tokenizer ({first_line(error)})") from None
        raise _not_found(name, error) from None
    if not getattr(tokenizer, "is_fast", False):
        raise TextclfError(f"model.name={name!r}: its tokenizer has no fast (tokenizers) version, which textclf needs")
    return tokenizer


def load_weights(name: str) -> PreTrainedModel:
    """The pretrained encoder (AutoModel) with its weights, read from ``name``."""
    from transformers import AutoModel

    try:
        with _quiet():
            return AutoModel.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as error:
        if _local(name) is not None:
            raise TextclfError(f"model.name={name!r}: cannot load its weights ({first_line(error)})") from None
        raise _not_found(name, error) from None
