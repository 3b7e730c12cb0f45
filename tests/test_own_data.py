"""The user's own corpus through the data stages: splits made for them, labels, text decoding.

Each test builds its corpus (a folder per class, or a table) in tmp_path; the sources
themselves are tested in test_source_folder.py, test_source_table.py and test_source_hf.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from textclf.config import Config, validate
from textclf.data.encoded import EncodedSplit, read_labels
from textclf.encoders.base import load_encoder
from textclf.errors import TextclfError
from textclf.params import compose
from textclf.stages.download import download
from textclf.stages.preprocess import preprocess

from conftest import REPO_ROOT
from corpora import texts, write_folder, write_table


def config(tmp_path: Path, *overrides: str) -> Config:
    paths = [f"paths.{name}={tmp_path / name}" for name in ("raw", "processed", "models", "reports", "cache")]
    return validate(compose([*overrides, "encoder.min_freq=1", *paths], root=REPO_ROOT))


def prepare(cfg: Config) -> dict:
    download(cfg, cfg.paths.raw, progress=False)
    return preprocess(cfg, cfg.paths.raw, cfg.paths.processed, parallel=False)


def test_a_folder_without_splits_gets_stratified_seeded_test_and_validation_holdouts(tmp_path: Path) -> None:
    corpus = write_folder(tmp_path / "corpus", texts(per_class=20))
    cfg = config(tmp_path, "data=folder", f"data.path={corpus}")
    manifest = prepare(cfg)
    assert manifest["counts"]["test"] == 3 * 4  # round(0.2 * 20) of each class
    assert manifest["counts"]["val"] == 3 * 2  # round(0.1 * 16)
    assert manifest["counts"]["train"] == 3 * 14
    assert manifest["splits"]["test"].startswith("held out: data.test_fraction=0.2")
    assert manifest["splits"]["val"].startswith("held out: data.val_fraction=0.1")
    test = EncodedSplit.load(cfg.paths.processed / "test.pt")
    assert torch.bincount(test.labels).tolist() == [4, 4, 4]  # stratified
    first = (cfg.paths.processed / "test.pt").read_bytes()
    again = config(tmp_path / "again", "data=folder", f"data.path={corpus}")
    prepare(again)
    assert (again.paths.processed / "test.pt").read_bytes() == first  # seeded: the same split
    other = config(tmp_path / "other", "data=folder", f"data.path={corpus}", "data.split_seed=1")
    prepare(other)
    assert (other.paths.processed / "test.pt").read_bytes() != first
    assert manifest["content_sha256"] == manifest["source"]["content_sha256"]


def test_non_ascii_words_get_the_same_ids_in_preprocess_and_in_the_served_encoder(tmp_path: Path) -> None:
    pairs = texts(per_class=10)
    corpus = write_folder(tmp_path / "corpus", pairs, split="train")
    write_folder(tmp_path / "corpus", texts(per_class=3, seed=1), split="test")
    cfg = config(tmp_path, "data=folder", f"data.path={corpus}")
    prepare(cfg)
    encoder = load_encoder(cfg.paths.processed)  # what the pyfunc packs (test_serving checks it is)
    for word in ("café", "東京", "naïve", "zürich"):
        assert encoder.index.get(word, 1) > 1, word  # one known token, not mojibake pieces
    train = EncodedSplit.load(cfg.paths.processed / "train.pt")
    val = EncodedSplit.load(cfg.paths.processed / "val.pt")
    stored = {
        tuple(split.tokens[split.offsets[i] : split.offsets[i + 1]].tolist())
        for split in (train, val)
        for i in range(len(split))
    }
    served = {tuple(encoder.encode([text])["tokens"].tolist()) for _, text in pairs}
    assert served == stored


def test_integer_labels_are_ordered_numerically_and_recorded(tmp_path: Path) -> None:
    classes = {"10": ["alpha", "beta", "gamma"], "2": ["delta", "epsilon", "zeta"], "1": ["eta", "theta", "iota"]}
    table = write_table(tmp_path / "stars.csv", texts(per_class=12, classes=classes), label_column="stars")
    cfg = config(tmp_path, "data=table", f"data.train={table}", "data.label_column=stars")
    prepare(cfg)
    assert read_labels(cfg.paths.processed) == ["1", "2", "10"]


def test_labels_with_spaces_unicode_and_slashes_are_kept(tmp_path: Path) -> None:
    classes = {"sci / space": ["orbit", "rocket"], "café crème": ["milk", "cup"], "東京 news": ["tokyo", "city"]}
    table = write_table(tmp_path / "t.jsonl", texts(per_class=10, classes=classes))
    cfg = config(tmp_path, "data=table", f"data.train={table}")
    prepare(cfg)
    assert read_labels(cfg.paths.processed) == sorted(classes)


def test_a_class_seen_only_in_test_is_an_error_naming_it(tmp_path: Path) -> None:
    train = write_table(tmp_path / "train.csv", texts(per_class=8))
    test = write_table(tmp_path / "test.csv", texts(per_class=2, classes={"rec.boats": ["hull"], "extra": ["odd"]}))
    cfg = config(tmp_path, "data=table", f"data.train={train}", f"data.test={test}")
    with pytest.raises(TextclfError, match=r"test classes missing from the training split: \['extra'\]"):
        prepare(cfg)
    assert not cfg.paths.processed.exists()


def test_a_class_missing_from_test_is_a_warning_and_metrics_say_which_classes_macro_averages_cover(
    tmp_path: Path, capsys, mlflow_uri: str
) -> None:
    from textclf.pipeline import run_pipeline

    train = write_table(tmp_path / "train.csv", texts(per_class=12))
    test = write_table(tmp_path / "test.csv", [pair for pair in texts(per_class=4, seed=3) if pair[0] != "talk.bread"])
    cfg = config(
        tmp_path,
        "data=table",
        f"data.train={train}",
        f"data.test={test}",
        "model.embed_dim=8",
        "model.ngram_buckets=0",
        "optimizer.lr=0.05",
        "trainer.max_epochs=4",
        "trainer.enable_progress_bar=false",
        "train.resume_interval_s=null",
    )
    manifest = prepare(cfg)
    assert manifest["classes_missing_from_test"] == ["talk.bread"]
    assert (
        "classes with no test document (macro averages run over the others): ['talk.bread']" in capsys.readouterr().out
    )
    run_pipeline(cfg, tmp_path / "job")
    metrics = json.loads((tmp_path / "job" / "reports" / "metrics.json").read_text())
    assert metrics["accuracy"] == 1.0  # so talk.bread is never predicted either
    assert metrics["macro_classes"] == 2
    assert metrics["macro_excludes"] == ["talk.bread"]


def test_a_class_too_small_to_hold_out_is_an_error_naming_it_and_its_count(tmp_path: Path) -> None:
    pairs = [*texts(per_class=8), ("lonely", "a single document of its own class")]
    cfg = config(tmp_path, "data=table", f"data.train={write_table(tmp_path / 't.csv', pairs)}")
    with pytest.raises(TextclfError, match="class 'lonely' has 1 document, too few to hold out a test split"):
        prepare(cfg)


def test_a_single_class_is_an_error(tmp_path: Path) -> None:
    pairs = texts(per_class=10, classes={"only": ["one", "two", "three"]})
    cfg = config(tmp_path, "data=table", f"data.train={write_table(tmp_path / 't.csv', pairs)}")
    with pytest.raises(TextclfError, match="single class"):
        prepare(cfg)


def test_a_test_split_that_is_the_training_split_is_an_error(tmp_path: Path) -> None:
    pairs = texts(per_class=8)
    corpus = write_folder(tmp_path / "corpus", pairs, split="train")
    write_folder(corpus, pairs, split="test")
    write_folder(corpus, texts(per_class=2, seed=5), split="validation")
    cfg = config(tmp_path, "data=folder", f"data.path={corpus}")
    with pytest.raises(TextclfError, match="the test split is the training split"):
        prepare(cfg)


def test_test_documents_also_in_training_are_counted_and_warned_about(tmp_path: Path, capsys) -> None:
    pairs = texts(per_class=8)
    train = write_table(tmp_path / "train.csv", pairs)
    test = write_table(tmp_path / "test.csv", [*pairs[:2], *texts(per_class=3, seed=9)])
    cfg = config(tmp_path, "data=table", f"data.train={train}", f"data.test={test}")
    manifest = prepare(cfg)
    assert manifest["duplicates"]["test_in_train"] == 2
    assert "warning: 2 test documents also occur in training" in capsys.readouterr().out


def test_invalid_utf8_documents_fall_back_per_document_and_are_counted(tmp_path: Path) -> None:
    corpus = write_folder(tmp_path / "corpus", texts(per_class=10))
    (corpus / "rec.boats" / "latin1.txt").write_bytes("cr\xe8me br\xfbl\xe9e hull".encode("latin-1"))
    manifest = prepare(config(tmp_path, "data=folder", f"data.path={corpus}"))
    assert manifest["decode_fallbacks"] == 1


def test_rows_with_empty_text_are_kept_and_counted(tmp_path: Path) -> None:
    pairs = [*texts(per_class=10), ("rec.boats", ""), ("talk.bread", "")]
    cfg = config(tmp_path, "data=table", f"data.train={write_table(tmp_path / 't.parquet', pairs)}")
    manifest = prepare(cfg)
    assert manifest["empty_documents"] == 2
    assert sum(manifest["counts"].values()) == 32


def test_the_local_corpus_hash_is_recorded_and_a_pinned_hash_is_checked(tmp_path: Path, capsys) -> None:
    corpus = write_folder(tmp_path / "corpus", texts(per_class=10))
    cfg = config(tmp_path, "data=folder", f"data.path={corpus}")
    record = download(cfg, cfg.paths.raw)
    assert f"pin it with -S data.sha256={record.content_sha256}" in capsys.readouterr().out
    assert json.loads((cfg.paths.raw / "source.json").read_text())["content_sha256"] == record.content_sha256
    pinned = config(tmp_path, "data=folder", f"data.path={corpus}", f"data.sha256={record.content_sha256}")
    assert download(pinned, tmp_path / "raw2").content_sha256 == record.content_sha256
    (corpus / "rec.boats" / "0000.txt").write_text("edited", encoding="utf-8")
    with pytest.raises(TextclfError, match="data.sha256"):
        download(pinned, tmp_path / "raw3")
    assert not (tmp_path / "raw3").exists()


def test_balanced_class_weights_raise_the_recall_of_a_rare_class(tmp_path: Path, mlflow_uri: str) -> None:
    from textclf.pipeline import run_pipeline

    # The rare class shares most of its words with a common one: unweighted, the common one wins.
    classes = {
        "common": ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"],
        "rare": ["alpha", "beta", "gamma", "delta", "epsilon", "omega"],
        "other": ["sail", "hull", "mast", "keel", "tide", "knot"],
    }
    train = [pair for pair in texts(per_class=100, classes=classes) if pair[0] != "rare"]
    train += [pair for pair in texts(per_class=10, classes=classes, seed=1) if pair[0] == "rare"]
    table = write_table(tmp_path / "imbalanced.csv", train)
    test = write_table(tmp_path / "test.csv", texts(per_class=30, classes=classes, seed=2))
    recall = {}
    for weights in ("null", "balanced"):
        cfg = config(
            tmp_path / weights,
            "data=table",
            f"data.train={table}",
            f"data.test={test}",
            f"train.class_weights={weights}",
            "model.embed_dim=8",
            "model.ngram_buckets=0",
            "trainer.max_epochs=4",
            "optimizer.lr=0.05",
            "trainer.enable_progress_bar=false",
            "train.batch_size=16",
            "train.resume_interval_s=null",
        )
        run_pipeline(cfg, tmp_path / weights / "job")
        per_class = json.loads((tmp_path / weights / "job" / "reports" / "per_class.json").read_text())
        recall[weights] = per_class["rare"]["recall"]
    assert recall["balanced"] > recall["null"]


def test_a_data_config_written_once_needs_no_overrides(tmp_path: Path) -> None:
    import shutil

    table = write_table(tmp_path / "reviews.csv", texts(per_class=10), text_column="review", label_column="stars")
    root = tmp_path / "project"
    shutil.copytree(REPO_ROOT / "conf", root / "conf")
    (root / "conf" / "data" / "reviews.yaml").write_text(
        f"defaults:\n  - table\n  - _self_\ncorpus: reviews\ntrain: {table}\ntext_column: review\nlabel_column: stars\n",
        encoding="utf-8",
    )
    paths = [f"paths.{name}={tmp_path / name}" for name in ("raw", "processed", "cache")]
    cfg = validate(compose(["data=reviews", *paths], root=root))
    assert (cfg.data.corpus, cfg.data.source_options["train"]) == ("reviews", str(table))
    assert cfg.paths.inputs[0] == str(table)  # DVC watches the file
    assert prepare(cfg)["num_classes"] == 3
