"""The preprocess stage: counts, a stratified and seeded validation split, a vocabulary from
the kept training documents only, byte-identical and atomic output; and what it does for
every source: splits held out where a source has none, splits that would make the test score
meaningless refused, class order, decode fallbacks counted (through the usenet source's tiny
archives, and through ``read_corpus`` for examples a source yields without a split)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import textclf.stages.preprocess as preprocess_module
from textclf.config import Config, build
from textclf.data.archive import content_sha256
from textclf.data.encoded import (
    PAD_ID,
    UNK_ID,
    EncodedSplit,
    TokenIds,
    read_labels,
    read_manifest,
    read_vocabulary,
    stratified_holdout,
)
from textclf.data.sources.base import RECORD_FILE, Example
from textclf.data.splits import class_order, make_splits
from textclf.encoders.base import ENCODER_FILE
from textclf.errors import TextclfError
from textclf.stages.download import download
from textclf.stages.preprocess import (
    FORMAT_VERSION,
    preprocess,
    read_corpus,
    second_process,
)

TRAIN, TEST = "20news-bydate-train", "20news-bydate-test"
ARCHIVE_NAME = "20news-bydate.tar.gz"  # data.archive_name: where the usenet source reads the raw directory
EXPECTED_FILES = {"train.pt", "val.pt", "test.pt", "vocab.txt", "labels.json", ENCODER_FILE, "manifest.json"}
TINY_GROUPS = ["rec.boats", "sci.orbits", "talk.bread"]


def write_corpus(raw: Path, files: dict[str, bytes]) -> Path:
    """The raw directory ``raw``, holding a tar archive of ``files`` as the download stage would."""
    raw.mkdir(parents=True, exist_ok=True)
    with tarfile.open(raw / ARCHIVE_NAME, "w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return raw


def raw_holding(archive: Path, raw: Path) -> Path:
    """A raw directory holding ``archive`` where the usenet source reads it (no source.json:
    what a download stage run wrote is optional to preprocess)."""
    raw.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(archive, raw / ARCHIVE_NAME)
    return raw


@pytest.fixture
def tiny_raw(tiny_archive, tmp_path: Path) -> Path:
    archive, _ = tiny_archive
    return raw_holding(archive, tmp_path / "raw")


# A headerless corpus whose tokens are known exactly: every training document carries a marker
# word of its own, every test document a word that no training document has.
GROUPS = {"g.alpha": "alphaword", "g.beta": "betaword", "g.gamma": "gammaword"}
TRAIN_PER_GROUP, TEST_PER_GROUP = 8, 2


def marker(group_index: int, doc: int) -> str:
    return f"trainmark{group_index}n{doc}"


@pytest.fixture
def marked_archive(tmp_path: Path) -> Path:
    """The raw directory of the marked corpus."""
    files = {}
    for g, (group, word) in enumerate(GROUPS.items()):
        for i in range(TRAIN_PER_GROUP):
            files[f"{TRAIN}/{group}/{100 + i}"] = f"{word} shared {marker(g, i)}\n".encode()
        for i in range(TEST_PER_GROUP):
            files[f"{TEST}/{group}/{500 + i}"] = f"zzonlytest {word} zzonlytest\n".encode()
    return write_corpus(tmp_path / "marked", files)


def documents(split: EncodedSplit) -> list[list[int]]:
    return [split.tokens[a:b].tolist() for a, b in zip(split.offsets[:-1].tolist(), split.offsets[1:].tolist())]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# --- the tiny corpus ---------------------------------------------------------------------


def test_counts_and_stratified_validation(tiny_config, tiny_archive, tmp_path: Path) -> None:
    archive, _ = tiny_archive
    cfg = tiny_config()
    record = download(cfg, cfg.paths.raw, progress=False)
    out = tmp_path / "processed"
    manifest = preprocess(cfg, cfg.paths.raw, out)
    counts = manifest["counts"]
    assert counts["train"] + counts["val"] == 48
    assert counts["test"] == 18
    assert counts == {"train": 36, "val": 12, "test": 18}
    assert manifest["num_classes"] == 3
    assert manifest["format_version"] == FORMAT_VERSION == 4
    assert manifest["content_sha256"] == record.content_sha256 == content_sha256(archive)
    assert manifest["source"] == record.to_json() == json.loads((cfg.paths.raw / RECORD_FILE).read_text())
    # The archive has its test split; validation is held out of the training documents.
    assert manifest["splits"] == {
        "train": "source",
        "val": f"held out: data.val_fraction={cfg.data.val_fraction}, data.split_seed={cfg.data.split_seed}",
        "test": "source",
    }
    assert manifest["decode_fallbacks"] == 0  # data.encoding=latin-1 reads every byte
    assert manifest["empty_documents"] == 0 and manifest["classes_missing_from_test"] == []
    assert read_labels(out) == TINY_GROUPS

    splits = {name: EncodedSplit.load(out / f"{name}.pt") for name in ("train", "val", "test")}
    assert Counter(splits["val"].labels.tolist()) == {0: 4, 1: 4, 2: 4}  # 0.25 * 16 per class
    assert Counter(splits["train"].labels.tolist()) == {0: 12, 1: 12, 2: 12}
    assert Counter(splits["test"].labels.tolist()) == {0: 6, 1: 6, 2: 6}
    for name, split in splits.items():
        assert len(split) == counts[name]
        assert split.tokens.dtype == torch.int32 and split.offsets.dtype == torch.int64
        assert split.offsets[0] == 0 and split.offsets[-1] == split.tokens.numel()
        assert bool((split.lengths > 0).all())
        assert manifest["tokens"][name] == split.tokens.numel()
        assert int(split.tokens.min()) >= UNK_ID  # no padding stored
        assert int(split.tokens.max()) < manifest["vocab_size"]
    vocabulary = read_vocabulary(out)
    assert len(vocabulary) == manifest["vocab_size"]
    assert vocabulary[:2] == ["<pad>", "<unk>"]
    assert {"sail", "orbit", "yeast", "subject", "caf\u00e9"} <= set(vocabulary)


def test_output_directory_holds_exactly_the_expected_files_with_matching_hashes(
    tiny_config, tiny_raw: Path, tmp_path: Path
) -> None:
    out = tmp_path / "processed"
    manifest = preprocess(tiny_config(), tiny_raw, out)
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []
    assert set(manifest["files"]) == EXPECTED_FILES - {"manifest.json"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    # The data hash covers the data files (encoder.json holds settings that are in the params too).
    data_files = {name: digest for name, digest in manifest["files"].items() if name != ENCODER_FILE}
    assert manifest["data_hash"] == hashlib.sha256(json.dumps(data_files, sort_keys=True).encode()).hexdigest()
    assert read_manifest(out) == manifest
    assert manifest["content_sha256"] is None and manifest["source"] is None  # no source.json in the raw directory


def test_running_twice_is_byte_identical(tiny_config, tiny_raw: Path, tmp_path: Path) -> None:
    cfg = tiny_config()
    out = tmp_path / "processed"
    preprocess(cfg, tiny_raw, out)
    first = snapshot(out)
    preprocess(cfg, tiny_raw, out)
    assert snapshot(out) == first
    other = tmp_path / "elsewhere" / "processed"
    preprocess(cfg, raw_holding(tiny_raw / ARCHIVE_NAME, tmp_path / "elsewhere" / "raw"), other)
    assert snapshot(other) == first


@pytest.mark.parametrize("chunk", [7, preprocess_module.CHUNK_DOCUMENTS], ids=["many-chunks", "one-chunk"])
def test_a_second_process_tokenizing_chunks_changes_no_byte(
    tiny_config, tiny_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(preprocess_module, "CHUNK_DOCUMENTS", chunk)  # 7: every other chunk in each process
    cfg = tiny_config()
    preprocess(cfg, tiny_raw, tmp_path / "alone", parallel=False)
    preprocess(cfg, tiny_raw, tmp_path / "shared", parallel=True)
    assert snapshot(tmp_path / "shared") == snapshot(tmp_path / "alone")
    worker = second_process()
    if (os.cpu_count() or 1) > 1:  # Linux, 2 cores here and in CI: the second process is real
        assert worker is not None
        with worker:
            assert worker.submit(os.getpid).result() != os.getpid()


def die_at_once(*args: object) -> None:
    os._exit(9)  # in the forked worker: as if the kernel had killed it


def test_a_killed_tokenizing_process_is_one_line_and_leaves_no_output(
    tiny_config, tiny_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if second_process() is None:
        pytest.skip("no forked second process on this machine")
    monkeypatch.setattr(preprocess_module, "_tokenize_chunk", die_at_once)  # the first chunk goes there
    out = tmp_path / "processed"
    with pytest.raises(TextclfError, match="process tokenizing documents died.*rerun preprocess") as caught:
        preprocess(tiny_config(), tiny_raw, out)
    assert "\n" not in str(caught.value)
    assert not out.exists()


def encoder_of(cfg: Config):
    return build("encoder", cfg.encoder)


def tokens_as_read(corpus) -> list[list[str]]:
    """Every document of a Corpus back as its tokens (through the corpus's own numbering)."""
    words = list(corpus.numbering.index)
    flat, lengths = np.concatenate(corpus.chunks), np.concatenate(corpus.lengths)
    ends = np.cumsum(lengths).tolist()
    return [[words[i] for i in flat[start:end].tolist()] for start, end in zip([0, *ends[:-1]], ends)]


@pytest.mark.parametrize("parallel", [False, True], ids=["one-process", "two-processes"])
def test_documents_read_in_chunks_keep_their_tokens_labels_and_splits(
    tiny_config, monkeypatch: pytest.MonkeyPatch, parallel: bool
) -> None:
    monkeypatch.setattr(preprocess_module, "CHUNK_DOCUMENTS", 2)  # chunks alternate between the processes
    texts = ["Spam eggs", "eggs HAM", "ham toast spam", "", "jam toast", "eggs jam beans"]  # new, old, repeats
    splits = ["train", "train", "validation", "test", None, "train"]
    labels = ["b", "a", "b", "c", "a", "b"]
    examples = [
        Example(split, label, text, f"doc {i}") for i, (split, label, text) in enumerate(zip(splits, labels, texts))
    ]
    encoder = encoder_of(tiny_config())
    corpus = read_corpus(iter(examples), encoder, parallel=parallel)
    assert len(corpus) == 6 and corpus.empty == 1 and corpus.unsplit == 1 and corpus.fallbacks == 0
    assert tokens_as_read(corpus) == [encoder.tokenize(text) for text in texts]
    assert [corpus.labels[code] for code in corpus.label_codes] == labels
    assert list(corpus.splits) == [0, 0, 1, 2, 0, 0]  # train and unsplit are both training documents


def test_split_depends_on_the_seed_only(tiny_config, tiny_raw: Path, tmp_path: Path) -> None:
    preprocess(tiny_config(), tiny_raw, tmp_path / "a")
    preprocess(tiny_config("data.split_seed=0"), tiny_raw, tmp_path / "b")
    preprocess(tiny_config("data.split_seed=1"), tiny_raw, tmp_path / "c")
    same = [(tmp_path / d / "val.pt").read_bytes() for d in "ab"]
    assert same[0] == same[1]
    a_val = documents(EncodedSplit.load(tmp_path / "a" / "val.pt"))
    c_val = documents(EncodedSplit.load(tmp_path / "c" / "val.pt"))
    assert a_val != c_val  # other documents held out (ids may differ too: other vocabulary)
    c = EncodedSplit.load(tmp_path / "c" / "val.pt")
    assert Counter(c.labels.tolist()) == {0: 4, 1: 4, 2: 4}  # still stratified


@pytest.mark.parametrize(
    ("remove", "gone", "kept"),
    [
        (["headers"], {"subject", "lines"}, {"sail", "quoted", "signature"}),
        (["footers"], {"signature"}, {"subject", "quoted"}),
        (["quotes"], {"quoted", "writes", "article", "someone"}, {"subject", "signature"}),
    ],
)
def test_remove_strips_words_from_the_vocabulary(
    tiny_config, tiny_raw: Path, tmp_path: Path, remove: list[str], gone: set[str], kept: set[str]
) -> None:
    preprocess(tiny_config(), tiny_raw, tmp_path / "plain")
    assert gone <= set(read_vocabulary(tmp_path / "plain"))  # the control: present by default

    cfg = tiny_config(f"encoder.remove=[{','.join(remove)}]")
    assert cfg.encoder["remove"] == remove
    manifest = preprocess(cfg, tiny_raw, tmp_path / "stripped")
    vocabulary = set(read_vocabulary(tmp_path / "stripped"))
    assert not gone & vocabulary
    assert kept <= vocabulary
    assert manifest["params"]["encoder"]["remove"] == remove
    saved = json.loads((tmp_path / "stripped" / ENCODER_FILE).read_text())  # what the served model strips
    assert saved["remove"] == remove


# --- a corpus with known tokens ----------------------------------------------------------


def test_vocabulary_comes_from_kept_training_documents_only(tiny_config, marked_archive: Path, tmp_path: Path) -> None:
    cfg = tiny_config()  # min_freq 1, val_fraction 0.25
    data = cfg.data
    out = tmp_path / "processed"
    manifest = preprocess(cfg, marked_archive, out)
    assert manifest["counts"] == {"train": 18, "val": 6, "test": 6}
    vocabulary = read_vocabulary(out)
    index = {w: i for i, w in enumerate(vocabulary)}

    # Test-only words are unknown; test documents are encoded with UNK_ID in their place.
    assert "zzonlytest" not in index
    test = EncodedSplit.load(out / "test.pt")
    words = list(GROUPS.values())
    assert documents(test) == [[UNK_ID, index[words[label]], UNK_ID] for label in test.labels.tolist()]

    # Which training documents were held out, computed independently.
    labels = [g for g in range(len(GROUPS)) for _ in range(TRAIN_PER_GROUP)]
    kept, held = stratified_holdout(labels, data.val_fraction, data.split_seed)
    assert len(held) == 6
    position = {i: (i // TRAIN_PER_GROUP, i % TRAIN_PER_GROUP) for i in range(len(labels))}
    kept_markers = {marker(*position[i]) for i in kept}
    held_markers = {marker(*position[i]) for i in held}
    assert kept_markers <= set(vocabulary)
    assert not held_markers & set(vocabulary)  # a word seen only in validation is unknown

    val = EncodedSplit.load(out / "val.pt")
    assert val.labels.tolist() == [labels[i] for i in held]
    assert documents(val) == [[index[words[labels[i]]], index["shared"], UNK_ID] for i in held]
    train = EncodedSplit.load(out / "train.pt")
    assert documents(train) == [[index[words[labels[i]]], index["shared"], index[marker(*position[i])]] for i in kept]


def test_test_classes_must_exist_in_training(tiny_config, tmp_path: Path) -> None:
    raw = write_corpus(
        tmp_path / "raw",
        {f"{TRAIN}/g.{c}/{i}": b"aa bb" for c in "ab" for i in range(4)} | {f"{TEST}/g.new/1": b"ee"},
    )
    with pytest.raises(TextclfError) as caught:
        preprocess(tiny_config(), raw, tmp_path / "out")
    assert (
        str(caught.value) == "test classes missing from the training split: ['g.new'] (add training documents of them)"
    )
    assert not (tmp_path / "out").exists()


# --- failures leave nothing --------------------------------------------------------------


def test_truncated_archive_leaves_no_output(tiny_config, tiny_archive, tmp_path: Path) -> None:
    archive, _ = tiny_archive
    cut = tmp_path / "raw" / ARCHIVE_NAME
    cut.parent.mkdir()
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    out = tmp_path / "processed"
    with pytest.raises(TextclfError, match="corrupt or truncated"):
        preprocess(tiny_config(), cut.parent, out)
    assert not out.exists()
    assert list(tmp_path.glob("*.partial-*")) == []


def test_failure_while_writing_keeps_the_previous_output(
    tiny_config, tiny_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "processed"
    preprocess(tiny_config(), tiny_raw, out)
    before = snapshot(out)

    def broken_write_json(*args, **kwargs):
        raise OSError("simulated failure after the tensors were written")

    monkeypatch.setattr(preprocess_module, "write_json", broken_write_json)
    with pytest.raises(OSError, match="simulated"):
        preprocess(tiny_config("data.split_seed=7"), tiny_raw, out)
    assert snapshot(out) == before
    assert list(tmp_path.glob("*.partial-*")) == []

    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="simulated"):
        preprocess(tiny_config(), tiny_raw, fresh)
    assert not fresh.exists()
    assert list(tmp_path.glob("*.partial-*")) == []


def test_invalid_token_pattern_fails_before_reading(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config("encoder.token_pattern='(unclosed'")
    with pytest.raises(TextclfError, match=r"encoder\.token_pattern") as caught:
        preprocess(cfg, tmp_path / "no-raw-directory", tmp_path / "out")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


# --- what preprocess does for every source -----------------------------------------------


def corpus_files(per_class: dict[str, int], test_per_class: dict[str, int] | None = None) -> dict[str, bytes]:
    """Archive members: ``per_class`` training documents and ``test_per_class`` test documents
    of each class (default: 2 each), every document's text distinct."""
    files = {}
    for split, counts in ((TRAIN, per_class), (TEST, test_per_class or dict.fromkeys(per_class, 2))):
        for label, count in counts.items():
            for i in range(count):
                files[f"{split}/{label}/{i}"] = f"word{label} common {split}{i}".encode()
    return files


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            f"data.test_dir={TRAIN}",
            f"data.train_dir and data.test_dir are both '{TRAIN}': the test split would be the training split "
            "(name the archive's test directory in data.test_dir)",
        ),
        ("data.encoding=klingon", "data.encoding: unknown text encoding 'klingon' (e.g. utf-8, latin-1, cp1252)"),
    ],
    ids=["train-dir-is-test-dir", "unknown-encoding"],
)
def test_source_settings_that_cannot_work_stop_both_data_stages_in_one_line(
    tiny_config, tiny_raw: Path, tmp_path: Path, override: str, message: str
) -> None:
    cfg = tiny_config(override)
    assert cfg.paths.raw == tiny_raw
    before = snapshot(tiny_raw)
    with pytest.raises(TextclfError) as caught:
        preprocess(cfg, tiny_raw, cfg.paths.processed)
    assert str(caught.value) == message
    with pytest.raises(TextclfError) as caught:
        download(cfg, cfg.paths.raw, progress=False)
    assert str(caught.value) == message
    assert not cfg.paths.processed.exists() and snapshot(tiny_raw) == before  # the raw directory as it was
    assert list(tmp_path.glob("*.partial-*")) == []


def test_a_test_split_holding_the_training_documents_is_refused(tiny_config, tmp_path: Path) -> None:
    files = corpus_files({"g.a": 4, "g.b": 4})
    trained = {name: payload for name, payload in files.items() if name.startswith(TRAIN)}
    copied = {name.replace(TRAIN, TEST, 1): payload for name, payload in trained.items()}
    raw = write_corpus(tmp_path / "raw", {**trained, **copied})
    with pytest.raises(TextclfError) as caught:
        preprocess(tiny_config(), raw, tmp_path / "out")
    assert str(caught.value) == (
        "the test split is the training split: all 8 test documents also occur in training (point the test "
        "split at held-out documents, or leave it out to have one held out: data.test_fraction)"
    )
    assert not (tmp_path / "out").exists()


def test_test_documents_that_also_occur_in_training_are_kept_counted_and_warned_about(
    tiny_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = corpus_files({"g.a": 4, "g.b": 4})
    files[f"{TEST}/g.a/copy"] = files[f"{TRAIN}/g.a/0"]
    manifest = preprocess(tiny_config(), write_corpus(tmp_path / "raw", files), tmp_path / "out")
    assert manifest["duplicates"]["test_in_train"] == 1 and manifest["counts"]["test"] == 5
    assert "preprocess: warning: 1 test documents also occur in training" in capsys.readouterr().out.splitlines()


def test_a_class_with_no_test_document_is_a_warning_and_in_the_manifest(
    tiny_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = corpus_files({"g.a": 4, "g.b": 4, "g.c": 4}, {"g.a": 2, "g.b": 2})
    manifest = preprocess(tiny_config(), write_corpus(tmp_path / "raw", files), tmp_path / "out")
    assert manifest["classes_missing_from_test"] == ["g.c"] and manifest["num_classes"] == 3
    warning = "preprocess: warning: classes with no test document (macro averages run over the others): ['g.c']"
    assert warning in capsys.readouterr().out.splitlines()


def test_a_class_with_one_training_document_cannot_be_held_out_for_validation(tiny_config, tmp_path: Path) -> None:
    raw = write_corpus(tmp_path / "raw", corpus_files({"g.a": 4, "g.rare": 1}))
    with pytest.raises(TextclfError) as caught:
        preprocess(tiny_config(), raw, tmp_path / "out")
    message = str(caught.value)
    assert message.startswith("class 'g.rare' has 1 document, too few to hold out a val split (data.val_fraction=0.25)")
    assert "\n" not in message and not (tmp_path / "out").exists()


def unsplit(counts: dict[str, int]) -> list[Example]:
    """Examples of a source that does not split (a folder of class folders, one table)."""
    return [
        Example(None, label, f"word{label} common doc{i}", f"{label}/{i}.txt")
        for label, count in counts.items()
        for i in range(count)
    ]


def splits_of(cfg: Config, examples: list[Example]):
    corpus = read_corpus(iter(examples), encoder_of(cfg), parallel=False)
    classes = class_order(corpus.labels)
    position = {name: i for i, name in enumerate(classes)}
    label_ids = np.array([position[corpus.labels[code]] for code in corpus.label_codes], dtype=np.int64)
    codes = np.frombuffer(bytes(corpus.splits), dtype=np.uint8)
    return make_splits(codes, label_ids, cfg.data, classes), label_ids


def test_a_source_without_splits_gets_seeded_stratified_test_and_validation_hold_outs(tiny_config) -> None:
    cfg = tiny_config()  # test_fraction 0.2, val_fraction 0.25
    examples = unsplit({"a": 20, "b": 10, "c": 5})
    splits, label_ids = splits_of(cfg, examples)
    held = {name: Counter(label_ids[getattr(splits, name)].tolist()) for name in ("train", "val", "test")}
    assert held["test"] == {0: 4, 1: 2, 2: 1}  # round(0.2 * n) of each class
    assert held["val"] == {0: 4, 1: 2, 2: 1}  # round(0.25 * the rest)
    assert held["train"] == {0: 12, 1: 6, 2: 3}
    every = np.concatenate([splits.train, splits.val, splits.test])
    assert sorted(every.tolist()) == list(range(len(examples)))  # each document in one split
    assert splits.how == {
        "train": "source",
        "val": "held out: data.val_fraction=0.25, data.split_seed=0",
        "test": "held out: data.test_fraction=0.2, data.split_seed=0",
    }
    again, _ = splits_of(cfg, examples)
    assert all(np.array_equal(getattr(again, name), getattr(splits, name)) for name in ("train", "val", "test"))
    other, _ = splits_of(tiny_config("data.split_seed=1"), examples)
    assert not np.array_equal(other.test, splits.test)


def test_a_class_with_one_document_cannot_be_held_out_for_test(tiny_config) -> None:
    with pytest.raises(TextclfError) as caught:
        splits_of(tiny_config(), unsplit({"common": 10, "rare one": 1}))
    message = str(caught.value)
    assert message.startswith(
        "class 'rare one' has 1 document, too few to hold out a test split (data.test_fraction=0.2)"
    )
    assert "\n" not in message


@pytest.mark.parametrize(
    ("labels", "ordered"),
    [
        (["10", "2", "1", "-3"], ["-3", "1", "2", "10"]),  # integers: by value
        (["10", "2", "b"], ["10", "2", "b"]),  # not all integers: as strings
        (["caf\u00e9", "a b", "z/y", "A"], ["A", "a b", "caf\u00e9", "z/y"]),
    ],
)
def test_class_order_is_sorted_numerically_when_every_label_is_an_integer(
    labels: list[str], ordered: list[str]
) -> None:
    assert class_order(labels) == ordered
    assert class_order(reversed(labels)) == ordered  # whatever order they were read in


def test_integer_class_folders_are_numbered_in_numeric_order(tiny_config, tmp_path: Path) -> None:
    raw = write_corpus(tmp_path / "raw", corpus_files({"10": 4, "2": 4, "1": 4}))
    out = tmp_path / "out"
    preprocess(tiny_config(), raw, out)
    assert read_labels(out) == ["1", "2", "10"]
    vocabulary = read_vocabulary(out)
    test = EncodedSplit.load(out / "test.pt")
    for document, label in zip(documents(test), test.labels.tolist()):  # each document's own word names its class
        assert vocabulary[document[0]] == f"word{read_labels(out)[label]}"


def test_documents_not_valid_in_the_encoding_are_read_as_latin1_and_counted(
    tiny_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = corpus_files({"g.a": 4, "g.b": 4})
    for name in files:  # every g.a document in Latin-1 (not valid UTF-8), every g.b one in UTF-8
        extra = "cr\u00e8me br\u00fbl\u00e9e" if "/g.a/" in name else "caf\u00e9 \u6771\u4eac"
        files[name] += f" {extra}".encode("latin-1" if "/g.a/" in name else "utf-8")
    out = tmp_path / "out"
    manifest = preprocess(tiny_config("data.encoding=utf-8"), write_corpus(tmp_path / "raw", files), out)
    assert manifest["decode_fallbacks"] == 6  # the g.a documents: 4 training, 2 test
    assert (
        "preprocess: 6 documents were not valid in the source's encoding (read as Latin-1)" in capsys.readouterr().out
    )
    assert {"cr\u00e8me", "br\u00fbl\u00e9e", "caf\u00e9", "\u6771\u4eac"} <= set(read_vocabulary(out))


# --- encoded.py --------------------------------------------------------------------------


@pytest.mark.parametrize("reader", ["split", "vocab", "labels", "manifest"])
def test_missing_processed_files_point_to_dvc_repro(tmp_path: Path, reader: str) -> None:
    load = {
        "split": lambda: EncodedSplit.load(tmp_path / "train.pt"),
        "vocab": lambda: read_vocabulary(tmp_path),
        "labels": lambda: read_labels(tmp_path),
        "manifest": lambda: read_manifest(tmp_path),
    }[reader]
    with pytest.raises(TextclfError, match=r"`dvc repro preprocess`") as caught:
        load()
    assert str(tmp_path) in str(caught.value)


def test_encoded_split_round_trip(tmp_path: Path) -> None:
    split = EncodedSplit.from_token_ids([[2, 3, 4], [], [5]], [1, 0, 2])
    assert split.offsets.tolist() == [0, 3, 3, 4]
    assert split.lengths.tolist() == [3, 0, 1]
    assert len(split) == 3
    split.save(tmp_path / "s.pt")
    loaded = EncodedSplit.load(tmp_path / "s.pt")
    for field in ("tokens", "offsets", "labels"):
        assert torch.equal(getattr(loaded, field), getattr(split, field))
        assert getattr(loaded, field).dtype == getattr(split, field).dtype
    assert loaded.document_frequency(6).tolist() == [0, 0, 1, 1, 1, 1]


def vocabulary(token_ids: TokenIds, documents: list[list[int]], min_freq: int, max_size: int | None):
    """The regex encoder's vocabulary of ``documents`` (numbered by ``token_ids``), as preprocess fits it."""
    from textclf.data.encoded import flatten_documents
    from textclf.encoders.regex import RegexEncoder

    encoder = RegexEncoder(lowercase=False, token_pattern=r"\w+", min_freq=min_freq, max_vocab=max_size, remove=[])
    counts = np.bincount(flatten_documents(documents)[0], minlength=len(token_ids.index))
    to_vocabulary = encoder.fit_numbered(token_ids, counts)
    return encoder.vocabulary, to_vocabulary


def test_vocabulary_is_by_frequency_then_alphabetical_and_maps_the_rest_to_unk() -> None:
    token_ids = TokenIds()
    docs = [token_ids(d) for d in (["b", "a", "b"], ["c", "a", "b"], ["d"])]
    unseen = token_ids(["a", "zz", "b"])  # a later split's words get ids but no vocabulary entry
    assert vocabulary(token_ids, docs, min_freq=1, max_size=None)[0] == ["<pad>", "<unk>", "b", "a", "c", "d"]
    assert vocabulary(token_ids, docs, min_freq=1, max_size=1)[0] == ["<pad>", "<unk>", "b"]
    words, to_vocabulary = vocabulary(token_ids, docs, min_freq=2, max_size=None)
    assert words == ["<pad>", "<unk>", "b", "a"]
    split = EncodedSplit.from_token_ids([unseen, docs[2]], [0, 1], to_vocabulary)
    assert split.tokens.tolist() == [3, UNK_ID, 2, UNK_ID] and split.tokens.dtype == torch.int32
    assert PAD_ID == 0 and UNK_ID == 1


def test_holdout_last_holds_out_each_class_latest_documents(tiny_config) -> None:
    """data.holdout=last: for documents in time order, test is each class's last documents and
    validation the last of what is left, so both are later than every training document of
    their class; the seed plays no part."""
    cfg = tiny_config("data.holdout=last")  # test_fraction 0.2, val_fraction 0.25
    examples = unsplit({"a": 20, "b": 10, "c": 5})  # in source order: a 0-19, b 20-29, c 30-34
    splits, label_ids = splits_of(cfg, examples)
    assert splits.test.tolist() == [16, 17, 18, 19, 28, 29, 34]  # round(0.2 * n) of each class
    assert splits.val.tolist() == [12, 13, 14, 15, 26, 27, 33]  # round(0.25 * the rest), the rest's last
    assert splits.train.tolist() == [*range(12), *range(20, 26), 30, 31, 32]
    assert splits.how["val"] == "held out: data.val_fraction=0.25, data.holdout=last"
    reseeded, _ = splits_of(tiny_config("data.holdout=last", "data.split_seed=1"), examples)
    assert all(np.array_equal(getattr(reseeded, name), getattr(splits, name)) for name in ("train", "val", "test"))


def test_holdout_last_keeps_one_training_document_per_class() -> None:
    labels = [0, 1, 0, 1, 1, 2, 1]  # class 2 has one document: it stays in training
    kept, held = stratified_holdout(labels, 0.5, seed=0, last=True)
    assert held == [2, 4, 6] and kept == [0, 1, 3, 5]


def test_holdout_last_of_multi_label_documents_is_the_last_documents(tiny_config) -> None:
    labels = np.eye(3, dtype=np.int64)[[0, 1, 2] * 10]  # (30, 3) multi-hot
    labels[::4, 1] = 1  # some documents with two labels
    splits = make_splits(np.zeros(30, dtype=np.uint8), labels, tiny_config("data.holdout=last").data, ["a", "b", "c"])
    assert splits.test.tolist() == list(range(24, 30))  # round(0.2 * 30)
    assert splits.val.tolist() == list(range(18, 24))  # round(0.25 * 24)
    assert splits.train.tolist() == list(range(18))


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_stratified_holdout_keeps_every_class(fraction: float) -> None:
    labels = [0] + [1] * 2 + [2] * 3 + [3] * 20
    kept, held = stratified_holdout(labels, fraction, seed=3)
    assert sorted(kept + held) == list(range(len(labels)))
    assert not set(kept) & set(held)
    assert {labels[i] for i in kept} == {0, 1, 2, 3}  # at least one training example each
    per_class = Counter(labels)
    held_per_class = Counter(labels[i] for i in held)
    for label, n in per_class.items():
        assert held_per_class[label] == min(round(fraction * n), n - 1)


def test_stratified_holdout_is_seeded() -> None:
    labels = [i % 4 for i in range(80)]
    assert stratified_holdout(labels, 0.25, 5) == stratified_holdout(labels, 0.25, 5)
    assert stratified_holdout(labels, 0.25, 5) != stratified_holdout(labels, 0.25, 6)
    kept, held = stratified_holdout(labels, 0.25, 5)
    assert kept == sorted(kept) and held == sorted(held)
    assert Counter(labels[i] for i in held) == {0: 5, 1: 5, 2: 5, 3: 5}
