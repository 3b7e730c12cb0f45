"""model=linear: the n-gram encoder's features and the linear model's TF-IDF vectors are
scikit-learn's, it trains through the real stages, and the shipped model gives evaluate's
probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from textclf.calibration import calibrated
from textclf.config import build, validate
from textclf.data.datamodule import TextDataModule
from textclf.data.encoded import UNK_ID, EncodedSplit
from textclf.encoders.base import load_encoder
from textclf.encoders.ngrams import CHAR_MARK, NgramEncoder
from textclf.errors import TextclfError
from textclf.models.checkpoint import load_checkpoint
from textclf.models.linear import LinearClassifier
from textclf.params import compose
from textclf.stages.download import download
from textclf.stages.evaluate import evaluate, predict
from textclf.stages.preprocess import preprocess
from textclf.stages.train import train
from textclf.tracking import mlflow_tracking_uri

from conftest import REPO_ROOT
from corpora import texts, write_table

TEXT = (
    "From: jim@cs.cmu.edu (Jim Smith)\nSubject: Re: comp.sys.mac  hard disks\n\n"
    "A  disk of 1.5 GB, \tnaïve café-owner's Mac; see ftp.apple.com or x@y.org a"
)
CORPUS = [
    "the cat sat on the mat, the cat",
    "a dog and a cat: dog@example.org",
    "the dog ate the mat and the hat",
    "bread and butter",
]


def ngram_encoder(**changes: object) -> NgramEncoder:
    """The encoder model=linear chooses (conf/encoder/ngrams.yaml), with ``changes``."""
    return build("encoder", {**compose(["model=linear"], root=REPO_ROOT).encoder, **changes})


def sklearn_features(text: str, token_pattern: str, word: tuple[int, int], char: tuple[int, int]) -> list[str]:
    words = TfidfVectorizer(token_pattern=token_pattern, ngram_range=word).build_analyzer()(text)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=char).build_analyzer()(text)
    return words + [CHAR_MARK + gram for gram in chars]


@pytest.mark.parametrize(("word", "char"), [((1, 2), (2, 5)), ((2, 3), (3, 4)), ((1, 1), (1, 1))])
def test_the_features_are_scikit_learns_word_and_char_wb_ngrams(word, char) -> None:
    encoder = ngram_encoder(word_ngrams=list(word), char_ngrams=list(char))
    assert encoder.tokenize(TEXT) == sklearn_features(TEXT, encoder.token_pattern, word, char)
    assert encoder.tokenize(TEXT) == encoder.tokenize(TEXT)  # again, from the cache of words


def test_the_token_pattern_keeps_addresses_and_host_names_whole() -> None:
    features = ngram_encoder(char_ngrams=None).tokenize(TEXT)
    for whole in ("jim@cs.cmu.edu", "comp.sys.mac", "ftp.apple.com", "x@y.org", "1.5"):
        assert whole in features
    assert "jim smith" in features and "cmu" not in features  # a bigram; the host stays one token
    chars = ngram_encoder(word_ngrams=None).tokenize("ab")
    assert chars == [CHAR_MARK + gram for gram in (" a", "ab", "b ", " ab", "ab ", " ab ")]  # never the word "ab"


def test_the_vocabulary_comes_from_the_training_texts_with_min_freq_and_max_vocab() -> None:
    encoder = ngram_encoder(char_ngrams=None, min_freq=2)
    encoder.fit(CORPUS)
    # Most frequent first (the: 6; and, cat: 3), ties alphabetical; seen once: <unk>.
    assert encoder.vocabulary == ["<pad>", "<unk>", "the", "and", "cat", "dog", "mat", "the cat", "the mat"]
    encoder = ngram_encoder(char_ngrams=None, min_freq=2, max_vocab=3)
    encoder.fit(CORPUS)
    assert encoder.vocabulary == ["<pad>", "<unk>", "the", "and", "cat"]
    ids = encoder.token_ids(["the bird and the cat"])[0]
    assert ids == [UNK_ID] * 5 + [2, 2, 3, 4]  # a bag: ascending; unknown n-grams are <unk>


def test_the_document_vector_is_scikit_learns_sublinear_l2_tfidf_row() -> None:
    encoder = ngram_encoder(min_freq=1)
    encoder.fit(CORPUS)
    split = EncodedSplit.from_token_ids(encoder.token_ids(CORPUS), [0] * len(CORPUS))
    model = LinearClassifier(vocab_size=encoder.vocab_size, num_classes=2, sparse=True)
    model.set_document_frequency(split.document_frequency(encoder.vocab_size), len(split))
    features, offsets, weights = model.document_vectors(split.tokens.long(), split.lengths)
    ours = torch.zeros(len(CORPUS), encoder.vocab_size, dtype=torch.float64)
    document = torch.repeat_interleave(
        torch.arange(len(CORPUS)), torch.diff(offsets, append=torch.tensor([features.numel()]))
    )
    ours[document, features] = weights.double()

    # The same features and vocabulary (sklearn's column j is our id j + 2, after <pad> and <unk>).
    vocabulary = {feature: i - UNK_ID - 1 for i, feature in enumerate(encoder.vocabulary) if i > UNK_ID}
    reference = TfidfVectorizer(analyzer=encoder.tokenize, vocabulary=vocabulary, sublinear_tf=True, norm="l2")
    expected = reference.fit_transform(CORPUS).toarray()
    assert ours[:, : UNK_ID + 1].abs().sum() == 0
    np.testing.assert_allclose(ours[:, UNK_ID + 1 :].numpy(), expected, rtol=1e-5, atol=1e-6)

    # Ids in any order (a text encoded elsewhere) give the same vector.
    shuffled = [list(reversed(ids)) for ids in encoder.token_ids(CORPUS)]
    again = EncodedSplit.from_token_ids(shuffled, [0] * len(CORPUS))
    torch.testing.assert_close(model.document_vectors(again.tokens.long(), again.lengths)[2], weights)


def test_an_unknown_or_empty_document_is_the_zero_vector_and_scores_the_bias() -> None:
    model = LinearClassifier(vocab_size=6, num_classes=3, sparse=True)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
        model.weight.weight.fill_(5.0)
    batch = {
        "tokens": torch.tensor([UNK_ID, UNK_ID, 4]),
        "offsets": torch.tensor([0, 2, 2]),
        "lengths": torch.tensor([2, 0, 1]),
    }
    logits = model(batch)
    torch.testing.assert_close(logits[:2], torch.tensor([[0.1, 0.2, 0.3]] * 2))
    torch.testing.assert_close(logits[2], torch.tensor([5.1, 5.2, 5.3]))  # one feature: weight 1 after the norm


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "encoder.word_ngrams=[2,1]",
            "encoder.word_ngrams: value error, the smallest n comes first: [1, 2] (got [2, 1])",
        ),
        ("encoder.char_ngrams=[0,3]", "encoder.char_ngrams: input should be greater than 0"),
        ("encoder.min_freq=0", "encoder.min_freq: input should be greater than 0 (got 0)"),
    ],
)
def test_bad_ngram_settings_are_one_line_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(TextclfError) as caught:
        validate(compose(["model=linear", override], root=REPO_ROOT))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_no_ngrams_at_all_is_refused_in_one_line() -> None:
    with pytest.raises(
        TextclfError, match=r"^encoder.word_ngrams and encoder.char_ngrams are both null: set at least one"
    ):
        ngram_encoder(word_ngrams=None, char_ngrams=None)


def test_model_linear_chooses_the_ngram_encoder_and_a_command_line_choice_still_wins() -> None:
    cfg = compose(["model=linear"], root=REPO_ROOT)
    assert cfg.encoder._target_ == "textclf.encoders.ngrams.NgramEncoder"
    assert cfg.model._target_ == "textclf.models.linear.LinearClassifier"
    assert (
        compose(["model=linear", "encoder=regex"], root=REPO_ROOT).encoder._target_
        == "textclf.encoders.regex.RegexEncoder"
    )
    assert compose([], root=REPO_ROOT).encoder._target_ == "textclf.encoders.regex.RegexEncoder"  # the default's


def test_linear_learns_the_tiny_corpus_through_the_stages(tiny_config, mlflow_uri: str) -> None:
    cfg = tiny_config("trainer.max_epochs=3", model="linear")
    download(cfg, cfg.paths.raw, progress=False)
    manifest = preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
    vocabulary = (cfg.paths.processed / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert "orbit" in vocabulary and "the orbit" in vocabulary and f"{CHAR_MARK} orb" in vocabulary
    assert manifest["params"]["encoder"]["char_ngrams"] == [2, 5]
    for name in ("train", "val", "test"):  # a bag of ids: each document's ascending
        split = EncodedSplit.load(cfg.paths.processed / f"{name}.pt")
        for start, stop in zip(split.offsets[:-1].tolist(), split.offsets[1:].tolist()):
            assert bool((split.tokens[start + 1 : stop] >= split.tokens[start : stop - 1]).all())
    train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    metrics = evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    assert metrics["accuracy"] == 1.0  # three groups with words of their own


def test_the_shipped_linear_model_gives_evaluates_probabilities(tmp_path: Path) -> None:
    pairs = texts(per_class=4, seed=7)  # the test split, in the order evaluate scores it
    train_table, test_table = (
        write_table(tmp_path / "train.csv", texts(per_class=12)),
        write_table(tmp_path / "test.csv", pairs),
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    paths = [f"paths.{name}={tmp_path / name}" for name in ("raw", "processed", "models", "reports", "cache")]
    overrides = [
        "model=linear",
        "data=table",
        f"data.train={train_table}",
        f"data.test={test_table}",
        "encoder.min_freq=1",
    ]
    settings = [
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
        "train.batch_size=8",
        f"tracking.uri={uri}",
    ]
    cfg = validate(compose([*overrides, *settings, *paths], root=REPO_ROOT))
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed, parallel=False)
    summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)

    module = load_checkpoint(cfg.paths.models / "model.ckpt")
    datamodule = TextDataModule(cfg.paths.processed, batch_size=8, eval_batch_size=8, max_len=None)
    temperature = json.loads((cfg.paths.reports / "metrics.json").read_text())["temperature"]
    expected = calibrated(predict(module, datamodule)[0], temperature).double()  # (N, C) evaluate's
    labels = json.loads((cfg.paths.processed / "labels.json").read_text())
    assert isinstance(load_encoder(cfg.paths.processed), NgramEncoder)
    with mlflow_tracking_uri(uri):
        shipped = mlflow.pyfunc.load_model(f"runs:/{summary.run_id}/model")
    frame = shipped.predict(pd.DataFrame({"text": [text for _, text in pairs]}))
    torch.testing.assert_close(torch.tensor(frame[labels].to_numpy(), dtype=torch.float64), expected, rtol=0, atol=1e-5)
    assert frame["label"].tolist() == [label for label, _ in pairs]  # and it learned them
