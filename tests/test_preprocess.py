"""The preprocess stage: counts, a stratified and seeded validation split, a vocabulary from
the kept training documents only, byte-identical and atomic output."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

import textclf.stages.preprocess as preprocess_module
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
from textclf.errors import TextclfError
from textclf.stages.preprocess import preprocess, second_process, token_ids_in_own_numbering

TRAIN, TEST = "20news-bydate-train", "20news-bydate-test"
EXPECTED_FILES = {"train.pt", "val.pt", "test.pt", "vocab.txt", "labels.json", "manifest.json"}
TINY_GROUPS = ["rec.boats", "sci.orbits", "talk.bread"]


def write_corpus(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


# A headerless corpus whose tokens are known exactly: every training document carries a marker
# word of its own, every test document a word that no training document has.
GROUPS = {"g.alpha": "alphaword", "g.beta": "betaword", "g.gamma": "gammaword"}
TRAIN_PER_GROUP, TEST_PER_GROUP = 8, 2


def marker(group_index: int, doc: int) -> str:
    return f"trainmark{group_index}n{doc}"


@pytest.fixture
def marked_archive(tmp_path: Path) -> Path:
    files = {}
    for g, (group, word) in enumerate(GROUPS.items()):
        for i in range(TRAIN_PER_GROUP):
            files[f"{TRAIN}/{group}/{100 + i}"] = f"{word} shared {marker(g, i)}\n".encode()
        for i in range(TEST_PER_GROUP):
            files[f"{TEST}/{group}/{500 + i}"] = f"zzonlytest {word} zzonlytest\n".encode()
    return write_corpus(tmp_path / "marked.tar.gz", files)


def documents(split: EncodedSplit) -> list[list[int]]:
    return [split.tokens[a:b].tolist() for a, b in zip(split.offsets[:-1].tolist(), split.offsets[1:].tolist())]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# --- the tiny corpus ---------------------------------------------------------------------


def test_counts_and_stratified_validation(tiny_config, tiny_archive, tmp_path: Path) -> None:
    archive, _ = tiny_archive
    out = tmp_path / "processed"
    manifest = preprocess(tiny_config().data, archive, out)
    counts = manifest["counts"]
    assert counts["train"] + counts["val"] == 48
    assert counts["test"] == 18
    assert counts == {"train": 36, "val": 12, "test": 18}
    assert manifest["num_classes"] == 3
    assert manifest["content_sha256"] == content_sha256(archive)
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
    tiny_config, tiny_archive, tmp_path: Path
) -> None:
    archive, _ = tiny_archive
    out = tmp_path / "processed"
    manifest = preprocess(tiny_config().data, archive, out)
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []
    assert set(manifest["files"]) == EXPECTED_FILES - {"manifest.json"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    assert manifest["data_hash"] == hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()
    assert read_manifest(out) == manifest


def test_running_twice_is_byte_identical(tiny_config, tiny_archive, tmp_path: Path) -> None:
    archive, _ = tiny_archive
    data = tiny_config().data
    out = tmp_path / "processed"
    preprocess(data, archive, out)
    first = snapshot(out)
    preprocess(data, archive, out)
    assert snapshot(out) == first
    other = tmp_path / "elsewhere" / "processed"
    preprocess(data, archive, other)
    assert snapshot(other) == first


def test_a_second_process_tokenizing_the_test_split_changes_no_byte(tiny_config, tiny_archive, tmp_path: Path) -> None:
    archive, _ = tiny_archive
    data = tiny_config().data
    preprocess(data, archive, tmp_path / "alone", parallel=False)
    preprocess(data, archive, tmp_path / "shared", parallel=True)
    assert snapshot(tmp_path / "shared") == snapshot(tmp_path / "alone")
    worker = second_process()
    if (os.cpu_count() or 1) > 1:  # Linux, 2 cores here and in CI: the second process is real
        assert worker is not None
        with worker:
            assert worker.submit(os.getpid).result() != os.getpid()


def die_at_once(*args: object) -> None:
    os._exit(9)  # in the forked worker: as if the kernel had killed it


def test_a_killed_tokenizing_process_is_one_line_and_leaves_no_output(
    tiny_config, tiny_archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if second_process() is None:
        pytest.skip("no forked second process on this machine")
    monkeypatch.setattr(preprocess_module, "token_ids_in_own_numbering", die_at_once)
    archive, _ = tiny_archive
    out = tmp_path / "processed"
    with pytest.raises(TextclfError, match="process tokenizing the test split died.*rerun preprocess"):
        preprocess(tiny_config().data, archive, out)
    assert not out.exists()


def test_renumbered_ids_are_those_numbering_in_one_pass_gives() -> None:
    first = [b"Spam eggs", b"eggs HAM"]
    second = [b"ham toast spam", b"jam toast", b"eggs jam beans"]  # new words, old words, repeats
    settings = (r"(?u)\b\w\w+\b", True, [])
    together = TokenIds()
    expected = [together(doc.decode().lower().split()) for doc in first + second]
    numbering = TokenIds()
    ids = [numbering(doc.decode().lower().split()) for doc in first]
    words, flat, lengths = token_ids_in_own_numbering(second, *settings)
    assert words == ["ham", "toast", "spam", "jam", "eggs", "beans"]
    assert lengths.tolist() == [3, 2, 3]
    renumbered = numbering.renumber(words, flat).tolist()
    assert ids + [renumbered[0:3], renumbered[3:5], renumbered[5:8]] == expected
    assert list(numbering.index) == list(together.index)


def test_split_depends_on_the_seed_only(tiny_config, tiny_archive, tmp_path: Path) -> None:
    archive, _ = tiny_archive
    base = tiny_config().data
    preprocess(base, archive, tmp_path / "a")
    preprocess(base.model_copy(update={"split_seed": 0}), archive, tmp_path / "b")
    preprocess(base.model_copy(update={"split_seed": 1}), archive, tmp_path / "c")
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
    tiny_config, tiny_archive, tmp_path: Path, remove: list[str], gone: set[str], kept: set[str]
) -> None:
    archive, _ = tiny_archive
    plain = tiny_config().data
    preprocess(plain, archive, tmp_path / "plain")
    assert gone <= set(read_vocabulary(tmp_path / "plain"))  # the control: present by default

    data = tiny_config(f"encoder.remove=[{','.join(remove)}]").data
    assert encoder.remove == remove
    manifest = preprocess(data, archive, tmp_path / "stripped")
    vocabulary = set(read_vocabulary(tmp_path / "stripped"))
    assert not gone & vocabulary
    assert kept <= vocabulary
    assert manifest["params"]["remove"] == remove


# --- a corpus with known tokens ----------------------------------------------------------


def test_vocabulary_comes_from_kept_training_documents_only(tiny_config, marked_archive: Path, tmp_path: Path) -> None:
    data = tiny_config().data  # min_freq 1, val_fraction 0.25
    out = tmp_path / "processed"
    manifest = preprocess(data, marked_archive, out)
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


def test_test_groups_must_exist_in_training(tiny_config, tmp_path: Path) -> None:
    archive = write_corpus(
        tmp_path / "a.tar.gz", {f"{TRAIN}/g.a/1": b"aa bb", f"{TRAIN}/g.a/2": b"cc dd", f"{TEST}/g.new/1": b"ee"}
    )
    with pytest.raises(TextclfError, match="g.new"):
        preprocess(tiny_config().data, archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- failures leave nothing --------------------------------------------------------------


def test_truncated_archive_leaves_no_output(tiny_config, tiny_archive, tmp_path: Path) -> None:
    archive, _ = tiny_archive
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    out = tmp_path / "processed"
    with pytest.raises(TextclfError, match="corrupt or truncated"):
        preprocess(tiny_config().data, cut, out)
    assert not out.exists()
    assert list(tmp_path.glob("*.partial-*")) == []


def test_failure_while_writing_keeps_the_previous_output(
    tiny_config, tiny_archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, _ = tiny_archive
    out = tmp_path / "processed"
    preprocess(tiny_config().data, archive, out)
    before = snapshot(out)

    def broken_write_json(*args, **kwargs):
        raise OSError("simulated failure after the tensors were written")

    monkeypatch.setattr(preprocess_module, "write_json", broken_write_json)
    with pytest.raises(OSError, match="simulated"):
        preprocess(tiny_config().data.model_copy(update={"split_seed": 7}), archive, out)
    assert snapshot(out) == before
    assert list(tmp_path.glob("*.partial-*")) == []

    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="simulated"):
        preprocess(tiny_config().data, archive, fresh)
    assert not fresh.exists()
    assert list(tmp_path.glob("*.partial-*")) == []


def test_invalid_token_pattern_fails_before_reading(tiny_config, tmp_path: Path) -> None:
    data = tiny_config().data.model_copy(update={"token_pattern": "(unclosed"})
    with pytest.raises(TextclfError, match=r"data\.token_pattern"):
        preprocess(data, tmp_path / "missing.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


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


def test_vocabulary_is_by_frequency_then_alphabetical_and_maps_the_rest_to_unk() -> None:
    token_ids = TokenIds()
    docs = [token_ids(d) for d in (["b", "a", "b"], ["c", "a", "b"], ["d"])]
    unseen = token_ids(["a", "zz", "b"])  # a later split's words get ids but no vocabulary entry
    assert token_ids.vocabulary(docs, min_freq=1, max_size=None)[0] == ["<pad>", "<unk>", "b", "a", "c", "d"]
    assert token_ids.vocabulary(docs, min_freq=1, max_size=1)[0] == ["<pad>", "<unk>", "b"]
    vocabulary, to_vocabulary = token_ids.vocabulary(docs, min_freq=2, max_size=None)
    assert vocabulary == ["<pad>", "<unk>", "b", "a"]
    split = EncodedSplit.from_token_ids([unseen, docs[2]], [0, 1], to_vocabulary)
    assert split.tokens.tolist() == [3, UNK_ID, 2, UNK_ID] and split.tokens.dtype == torch.int32
    assert PAD_ID == 0 and UNK_ID == 1


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
