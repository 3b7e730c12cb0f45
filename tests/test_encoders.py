"""The text encoder preprocess fits and saves and the shipped model loads: same text, same ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from textclf.config import build
from textclf.data.encoded import UNK_ID, VOCAB_FILE
from textclf.encoders.base import ENCODER_FILE, load_encoder
from textclf.encoders.regex import RegexEncoder
from textclf.errors import TextclfError
from textclf.params import compose

from conftest import REPO_ROOT

TRAIN = [
    "Le café est chaud; le café est noir.",
    "東京 est loin, 東京 est grand.",
    "Une idée naïve, très naïve.",
    "the cat sat on the mat",
]
NON_ASCII = ["café", "東京", "naïve"]


def regex_encoder(**changes: object) -> RegexEncoder:
    """The default config's encoder (conf/encoder/regex.yaml, with fastText's min_freq from
    conf/tuned/fasttext_adam.yaml), with ``changes``."""
    return build("encoder", {**compose([], root=REPO_ROOT).encoder, **changes})


def fitted(**changes: object) -> RegexEncoder:
    encoder = regex_encoder(**changes)
    encoder.fit(TRAIN)
    return encoder


def test_the_default_config_builds_the_regex_encoder_with_its_settings() -> None:
    cfg = compose([], root=REPO_ROOT)
    encoder = build("encoder", cfg.encoder)
    assert isinstance(encoder, RegexEncoder)
    assert encoder.settings() == {key: value for key, value in cfg.encoder.items() if key != "_target_"}


def test_the_vocabulary_keeps_frequent_words_most_frequent_first_after_pad_and_unk() -> None:
    encoder = fitted(min_freq=2)  # words seen twice or more
    assert encoder.vocabulary == ["<pad>", "<unk>", "est", "café", "le", "naïve", "the", "東京"]  # ties: alphabetical
    assert encoder.vocab_size == 8
    assert fitted(min_freq=1, max_vocab=3).vocabulary == ["<pad>", "<unk>", "est", "café", "le"]


def test_encode_gives_the_flat_batch_mapping() -> None:
    encoder = fitted()
    batch = encoder.encode(["le café", "", "est 東京 inconnu"])
    assert set(batch) == {"tokens", "offsets", "lengths"}
    assert all(tensor.dtype == torch.int64 for tensor in batch.values())
    index = encoder.index
    assert batch["tokens"].tolist() == [index["le"], index["café"], index["est"], index["東京"], UNK_ID]  # (T,)
    assert batch["offsets"].tolist() == [0, 2, 2]  # (B,)
    assert batch["lengths"].tolist() == [2, 0, 3]  # (B,)
    empty = encoder.encode([])
    assert [tuple(tensor.shape) for tensor in empty.values()] == [(0,), (0,), (0,)]


def test_non_ascii_words_are_single_tokens_with_the_same_ids_after_saving(tmp_path: Path) -> None:
    encoder = fitted()
    assert encoder.tokenize("Café, 東京 et naïve") == ["café", "東京", "et", "naïve"]  # one token each
    encoder.save(tmp_path)
    loaded = load_encoder(tmp_path)
    text = " ".join(NON_ASCII)
    assert loaded.ids(text) == encoder.ids(text) == [encoder.index[word] for word in NON_ASCII]
    assert UNK_ID not in loaded.ids(text)
    assert NON_ASCII[1] in (tmp_path / VOCAB_FILE).read_text(encoding="utf-8").split("\n")  # not mojibake


def test_a_saved_encoder_loads_with_its_settings_vocabulary_and_encoding(tmp_path: Path) -> None:
    encoder = fitted(lowercase=False, min_freq=1, remove=["headers"])
    encoder.save(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [ENCODER_FILE, VOCAB_FILE]
    description = json.loads((tmp_path / ENCODER_FILE).read_text(encoding="utf-8"))
    assert description == {"_target_": "textclf.encoders.regex.RegexEncoder", **encoder.settings()}
    loaded = load_encoder(tmp_path)
    assert isinstance(loaded, RegexEncoder)
    assert loaded.settings() == encoder.settings()
    assert loaded.vocabulary == encoder.vocabulary and loaded.vocab_size == encoder.vocab_size
    texts = ["Subject: x\n\nLe café NOIR", *TRAIN]
    for key, tensor in encoder.encode(texts).items():
        assert torch.equal(loaded.encode(texts)[key], tensor), key


def test_load_encoder_refuses_a_target_that_is_not_an_encoder_in_one_line(tmp_path: Path) -> None:
    fitted().save(tmp_path)
    description = json.loads((tmp_path / ENCODER_FILE).read_text(encoding="utf-8"))
    (tmp_path / ENCODER_FILE).write_text(json.dumps({**description, "_target_": "os.system"}), encoding="utf-8")
    with pytest.raises(TextclfError, match=r"refusing to build encoder 'os.system'") as error:
        load_encoder(tmp_path)
    assert "\n" not in str(error.value) and str(tmp_path / ENCODER_FILE) in str(error.value)
    (tmp_path / ENCODER_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(TextclfError, match="not valid JSON"):
        load_encoder(tmp_path)


def test_load_encoder_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TextclfError, match=rf"{ENCODER_FILE}: not found \(run `dvc repro preprocess`\)"):
        load_encoder(tmp_path)
    fitted().save(tmp_path)
    (tmp_path / VOCAB_FILE).unlink()
    with pytest.raises(TextclfError, match=rf"{VOCAB_FILE}: not found"):
        load_encoder(tmp_path)


def test_an_encoder_without_a_vocabulary_says_to_fit_it() -> None:
    with pytest.raises(TextclfError, match="no vocabulary yet"):
        regex_encoder().encode(["text"])


def test_display_tokens_are_the_vocabulary_words_of_the_ids() -> None:
    """What the run report shows of a document: each id's word, <unk> for a word outside the vocabulary."""
    encoder = fitted()
    (ids,) = encoder.token_ids(["Le café est inconnu"])
    assert encoder.display_tokens(ids) == ["le", "café", "est", "<unk>"]
    assert encoder.display_tokens([]) == []
    with pytest.raises(TextclfError, match="no vocabulary yet"):
        regex_encoder().display_tokens([2])
