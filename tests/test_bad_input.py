"""The bad-input table: every row stops its stage with one line that names the problem, a
non-zero exit where a CLI runs, and nothing half-written; or, for odd documents, is kept
and counted.

A few representative rows run the stage CLI (`python -m textclf.stages.<stage> --params`)
in a subprocess; the rest call the stage functions in-process, which is what the CLIs run.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import io
import os
import random
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from mlflow import MlflowClient
from omegaconf import OmegaConf

from textclf.config import load_params
from textclf.data.encoded import EncodedSplit, read_manifest
from textclf.errors import TextclfError, describe_composition_error
from textclf.params import compose
from textclf.stages.download import download
from textclf.stages.preprocess import preprocess
from textclf.stages.train import train

from conftest import GROUP_WORDS, REPO_ROOT, message, shrink_overrides, subprocess_env

TRAIN, TEST = "20news-bydate-train", "20news-bydate-test"
OUTPUTS = {"download": ("raw",), "preprocess": ("processed",), "train": ("models", "reports")}
PER_GROUP = {TRAIN: 6, TEST: 3}


# --- inputs --------------------------------------------------------------------------------


def file_member(name: str, payload: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


def special_member(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def corpus_members(per_group: dict[str, int] = PER_GROUP) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The well-formed 20news-bydate layout: 3 groups, 6 training and 3 test messages each."""
    rng = random.Random(0)
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for split, count in per_group.items():
        for group in GROUP_WORDS:
            members.append(special_member(f"{split}/{group}", tarfile.DIRTYPE))
            for index in range(count):
                members.append(file_member(f"{split}/{group}/{1000 + index}", message(group, index, rng)))
    return members


def write_archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path.read_bytes()


def write_params(tmp_path: Path, *overrides: str, edit: Callable[[dict], None] | None = None) -> Path:
    """params.yaml: the real conf/ shrunk to the tiny corpus, every path in tmp_path.

    ``edit`` changes the composed values by hand (what a user editing params.yaml does)."""
    archive = tmp_path / "source" / "20news-bydate.tar.gz"
    if not archive.is_file():
        write_archive(archive, corpus_members())
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    paths = [f"paths.{name}={tmp_path / name}" for name in ("raw", "processed", "models", "reports", "cache")]
    values = OmegaConf.to_container(compose([*shrink_overrides(archive, sha256), *paths, *overrides], root=REPO_ROOT))
    if edit is not None:
        edit(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def run_cli(module: str, params: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, "--params", str(params)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{cwd / 'mlflow.db'}", **env),
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- what every failing row asserts ------------------------------------------------------------


def assert_one_line(message: str, *named: str) -> None:
    assert "\n" not in message.strip(), message
    for fragment in named:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def assert_cli_failed(result: subprocess.CompletedProcess, stage: str, *named: str) -> None:
    """Exit status 1 and one error line, the last on stderr (a progress bar may precede it)."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]] and lines[-1].startswith(f"error: [{stage}] "), result.stderr
    assert_one_line(lines[-1], *named)


def assert_nothing_half_written(tmp_path: Path, stage: str) -> None:
    for name in OUTPUTS[stage]:
        out = tmp_path / name
        assert not out.exists() or not any(out.iterdir()), f"{out} holds {list(out.iterdir())}"
    leftovers = [str(p) for p in tmp_path.rglob("*.partial*")]
    assert leftovers == []


# --- archives that preprocess must refuse -----------------------------------------------------


def truncated(members: list) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        data = write_archive(path, members)
        path.write_bytes(data[: len(data) // 2])

    return build


def corrupted(members: list) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        data = bytearray(write_archive(path, members))
        middle = len(data) // 2
        data[middle : middle + 16] = bytes(b ^ 0x5A for b in data[middle : middle + 16])
        path.write_bytes(bytes(data))

    return build


def with_members(*extra: tuple[tarfile.TarInfo, bytes | None]) -> Callable[[Path], None]:
    return lambda path: write_archive(path, [*corpus_members(), *extra])


BAD_ARCHIVES: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    # row: (archive builder, what the one line must say, run through the CLI?)
    "truncated-gzip": (truncated(corpus_members()), "corrupt or truncated archive", False),
    "corrupt-gzip": (corrupted(corpus_members()), "corrupt or truncated archive", True),
    "member-dotdot": (
        with_members(file_member(f"{TRAIN}/rec.boats/../../../evil.txt", b"x")),
        "refusing member '20news-bydate-train/rec.boats/../../../evil.txt': it escapes",
        False,
    ),
    "member-absolute": (with_members(file_member("/tmp/evil.txt", b"x")), "refusing member '/tmp/evil.txt'", True),
    "member-symlink": (
        with_members(special_member(f"{TRAIN}/rec.boats/link", tarfile.SYMTYPE, "/etc/passwd")),
        "refusing member '20news-bydate-train/rec.boats/link': links are not allowed",
        False,
    ),
    "member-hardlink": (
        with_members(special_member(f"{TRAIN}/rec.boats/hard", tarfile.LNKTYPE, f"{TRAIN}/rec.boats/1000")),
        "refusing member '20news-bydate-train/rec.boats/hard': links are not allowed",
        False,
    ),
    "member-device": (
        with_members(special_member(f"{TRAIN}/rec.boats/null", tarfile.CHRTYPE)),
        "refusing member '20news-bydate-train/rec.boats/null': not a regular file",
        False,
    ),
    "member-fifo": (
        with_members(special_member(f"{TRAIN}/rec.boats/pipe", tarfile.FIFOTYPE)),
        "refusing member '20news-bydate-train/rec.boats/pipe': not a regular file",
        False,
    ),
    "empty-category-in-train": (
        with_members(special_member(f"{TRAIN}/rec.empty", tarfile.DIRTYPE)),
        "no messages in category directory '20news-bydate-train/rec.empty/'",
        False,
    ),
    "empty-category-in-test-only": (
        with_members(special_member(f"{TEST}/rec.empty", tarfile.DIRTYPE)),
        "no messages in category directory '20news-bydate-test/rec.empty/'",
        False,
    ),
    "category-in-test-only": (
        with_members(file_member(f"{TEST}/rec.extra/1", b"Subject: hi\n\nhello there")),
        "test classes missing from the training split: ['rec.extra']",
        False,
    ),
}
# Rows whose error is about the corpus as a whole (any source's): it names the class, not the archive.
NAMES_NO_ARCHIVE = {"category-in-test-only"}


@pytest.mark.parametrize("row", list(BAD_ARCHIVES))
def test_bad_archive_stops_preprocess(tmp_path: Path, row: str) -> None:
    build, named, via_cli = BAD_ARCHIVES[row]
    params = write_params(tmp_path)
    archive = tmp_path / "raw" / "20news-bydate.tar.gz"
    build(archive)
    fragments = (named,) if row in NAMES_NO_ARCHIVE else (str(archive), named)
    if via_cli:
        result = run_cli("textclf.stages.preprocess", params, tmp_path)
        assert_cli_failed(result, "preprocess", *fragments)
    else:
        cfg = load_params(params)
        with pytest.raises(TextclfError) as error:
            preprocess(cfg, archive.parent, cfg.paths.processed)
        assert_one_line(str(error.value), *fragments)
    assert_nothing_half_written(tmp_path, "preprocess")


def test_wrong_checksum_stops_download(tmp_path: Path) -> None:
    params = write_params(tmp_path, f"data.sha256={'0' * 64}")
    result = run_cli("textclf.stages.download", params, tmp_path)
    assert_cli_failed(result, "download", "checksum mismatch for", "20news-bydate.tar.gz", "0" * 64)
    assert_nothing_half_written(tmp_path, "download")


# --- documents that are kept ----------------------------------------------------------------


def test_empty_binary_and_non_utf8_documents_are_kept_and_counted(tmp_path: Path) -> None:
    odd = {
        f"{TRAIN}/rec.boats/empty": b"",
        f"{TRAIN}/sci.orbits/binary": bytes(range(256)) * 4,
        f"{TRAIN}/talk.bread/latin1": "Subject: pain\n\ncr\xe8me br\xfbl\xe9e dough".encode("latin-1"),
        f"{TEST}/rec.boats/empty": b"",
        f"{TEST}/sci.orbits/invalid-utf8": b"orbit \xff\xfe\xc3\x28 rocket",
    }
    params = write_params(tmp_path)
    archive = tmp_path / "raw" / "20news-bydate.tar.gz"
    write_archive(archive, [*corpus_members(), *(file_member(name, raw) for name, raw in odd.items())])
    cfg = load_params(params)
    manifest = preprocess(cfg, archive.parent, cfg.paths.processed)
    groups = len(GROUP_WORDS)
    assert manifest["counts"]["train"] + manifest["counts"]["val"] == groups * PER_GROUP[TRAIN] + 3
    assert manifest["counts"]["test"] == groups * PER_GROUP[TEST] + 2
    splits = {name: EncodedSplit.load(cfg.paths.processed / f"{name}.pt") for name in ("train", "val", "test")}
    assert int((splits["test"].lengths == 0).sum()) == 1  # the empty test document, as zero tokens
    assert sum(int((s.lengths == 0).sum()) for s in (splits["train"], splits["val"])) == 1
    assert manifest["duplicates"] == {"within_train": 0, "within_test": 0, "test_in_train": 1}  # b""
    assert manifest["empty_documents"] == 2
    assert manifest["decode_fallbacks"] == 0  # data.encoding=latin-1 (20 Newsgroups) reads every byte


def test_duplicate_documents_are_reported_in_the_manifest(tmp_path: Path) -> None:
    members = corpus_members()
    payload = {info.name: raw for info, raw in members if raw is not None}
    copies = {
        f"{TRAIN}/talk.bread/copy-within-train": payload[f"{TRAIN}/rec.boats/1000"],
        f"{TRAIN}/rec.boats/copy-within-train-2": payload[f"{TRAIN}/rec.boats/1001"],
        f"{TEST}/sci.orbits/copy-within-test": payload[f"{TEST}/sci.orbits/1000"],
        f"{TEST}/talk.bread/copy-of-train": payload[f"{TRAIN}/talk.bread/1002"],
    }
    params = write_params(tmp_path)
    archive = tmp_path / "raw" / "20news-bydate.tar.gz"
    write_archive(archive, [*members, *(file_member(name, raw) for name, raw in copies.items())])
    cfg = load_params(params)
    preprocess(cfg, archive.parent, cfg.paths.processed)
    manifest = read_manifest(cfg.paths.processed)
    assert manifest["duplicates"] == {"within_train": 2, "within_test": 1, "test_in_train": 1}
    assert manifest["counts"]["test"] == len(GROUP_WORDS) * PER_GROUP[TEST] + 2  # all kept


# --- params ---------------------------------------------------------------------------------


def delete(*keys: str) -> Callable[[dict], None]:
    def edit(values: dict) -> None:
        *parents, last = keys
        for key in parents:
            values = values[key]
        del values[last]

    return edit


def set_value(value: Any, *keys: str) -> Callable[[dict], None]:
    def edit(values: dict) -> None:
        *parents, last = keys
        for key in parents:
            values = values[key]
        values[last] = value

    return edit


BAD_PARAMS: dict[str, tuple[list[str], Callable[[dict], None] | None, str, bool]] = {
    # row: (overrides, hand edit of params.yaml, key the line must name, run through the CLI?)
    "negative-lr": (["optimizer.lr=-0.1"], None, "optimizer.lr: input should be greater than 0", False),
    "dropout-one": (["model.dropout=1.0"], None, "model.dropout: input should be less than 1", True),
    "max-len-zero": (["model.max_len=0"], None, "model.max_len", False),
    "batch-size-zero": (["train.batch_size=0"], None, "train.batch_size: input should be greater than 0", False),
    "batch-size-text": (["train.batch_size=many"], None, "train.batch_size", False),
    "lr-text": ([], set_value("fast", "optimizer", "lr"), "optimizer.lr", False),
    "missing-key": ([], delete("data", "val_fraction"), "data.val_fraction: missing", True),
    # A key of the source's own (an argument of its constructor): named wherever the data section is
    # checked (load_params' default targets, and the data stages' DATA_SECTIONS).
    "missing-source-key": ([], delete("data", "sha256"), "data.sha256: missing", False),
    "missing-section-key": ([], delete("trainer", "max_epochs"), "trainer.max_epochs: missing", False),
    "unknown-model": (
        [],
        set_value("textclf.models.nope.Nope", "model", "_target_"),
        "model._target_: cannot import",
        False,
    ),
    "unknown-optimizer": ([], set_value("torch.optim.Nope", "optimizer", "_target_"), "optimizer._target_", False),
    "unknown-trainer": ([], set_value("lightning.pytorch.Tpu", "trainer", "_target_"), "trainer._target_", False),
}


@pytest.mark.parametrize("row", list(BAD_PARAMS))
def test_bad_params_are_caught_before_any_work(tmp_path: Path, row: str) -> None:
    overrides, edit, named, via_cli = BAD_PARAMS[row]
    params = write_params(tmp_path, *overrides, edit=edit)
    if via_cli:
        result = run_cli("textclf.stages.train", params, tmp_path)
        assert_cli_failed(result, "train", str(params), named)
        assert not (tmp_path / "mlflow.db").exists()  # not even the tracking store was touched
    else:
        with pytest.raises(TextclfError) as error:
            load_params(params)
        assert_one_line(str(error.value), str(params), named)
    assert_nothing_half_written(tmp_path, "train")


@pytest.mark.parametrize("override", ["model=nope", "optimizer=nope", "trainer=tpu"])
def test_unknown_config_group_is_named_in_one_line(tmp_path: Path, override: str) -> None:
    group, option = override.split("=")
    with pytest.raises(Exception) as error:  # Hydra's own exception types
        compose([override], root=REPO_ROOT)
    assert_one_line(describe_composition_error(error.value), f"'{group}/{option}'", f"available options in '{group}'")
    if group == "model":  # and through `python -m textclf.params` (make params)
        out = tmp_path / "params.yaml"
        result = subprocess.run(
            [sys.executable, "-m", "textclf.params", str(out), override],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env=subprocess_env(),
        )
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert (
            len(lines) == 1 and "Could not find 'model/nope'" in lines[0] and "fasttext, hf, linear, lstm" in lines[0]
        )
        assert not out.exists()


# --- tracking store, diverging loss, full disk -------------------------------------------------


@pytest.fixture
def prepared(tmp_path: Path):
    """params.yaml plus its downloaded and preprocessed data (tiny corpus)."""

    def build(*overrides: str, edit: Callable[[dict], None] | None = None):
        params = write_params(tmp_path, *overrides, edit=edit)
        cfg = load_params(params)
        download(cfg, cfg.paths.raw, progress=False)
        preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
        return params, cfg

    return build


def test_unreachable_mlflow_server_fails_fast_before_training(prepared, tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    params, _ = prepared(edit=set_value(uri, "tracking", "uri"))
    result = run_cli("textclf.stages.train", params, tmp_path)
    assert_cli_failed(result, "train", f"MLflow tracking URI {uri} is unreachable")
    assert_nothing_half_written(tmp_path, "train")


def test_sqlite_store_in_a_missing_directory_fails_before_training(prepared, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'mlflow.db'}"
    _, cfg = prepared(edit=set_value(uri, "tracking", "uri"))
    started = time.monotonic()
    with pytest.raises(TextclfError) as error:
        train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    assert time.monotonic() - started < 5
    assert_one_line(str(error.value), uri, "does not exist")
    assert not (tmp_path / "no").exists()
    assert_nothing_half_written(tmp_path, "train")


class PoisonWeights(pl.Callback):
    """Sets every weight to NaN at the first batch of ``epoch``: the next loss is NaN."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.fill_(float("nan"))


@pytest.mark.parametrize("earlier_model", [True, False], ids=["after-a-good-run", "first-run"])
def test_nan_loss_stops_training_and_keeps_the_last_good_model(
    prepared, mlflow_uri: str, tmp_path: Path, earlier_model: bool
) -> None:
    _, cfg = prepared("trainer.max_epochs=2")
    models, checkpoint = cfg.paths.models, cfg.paths.models / "model.ckpt"
    if earlier_model:
        train(cfg, cfg.paths.processed, models, cfg.paths.reports)
        good = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    with pytest.raises(TextclfError) as error:
        train(cfg, cfg.paths.processed, models, cfg.paths.reports, callbacks=[PoisonWeights(epoch=1)])
    message = str(error.value)
    assert_one_line(message, "training loss is nan at epoch 1", "training stopped")
    assert gc.get_freeze_count() == 0  # a failed training unfreezes the collector's objects too
    assert not models.with_name("models.partial").exists()
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("textclf").experiment_id], order_by=["start_time DESC"])
    assert runs[0].info.status == "FAILED"  # the diverged run is marked, not left running
    if earlier_model:
        assert f"{models} keeps the last good model" in message
        assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == good
    else:
        assert f"no model written to {models}" in message
        assert_nothing_half_written(tmp_path, "train")


def _disk_full(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _half_written_then_disk_full(obj: Any, target: Any, *args: Any, **kwargs: Any) -> None:
    Path(target).write_bytes(b"\x80\x02half a tensor")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))


@pytest.mark.parametrize("where", ["preprocess:torch.save", "preprocess:os.replace", "download:os.replace"])
def test_a_full_disk_leaves_nothing_half_written(tmp_path: Path, monkeypatch, where: str) -> None:
    stage, patched = where.split(":")
    cfg = load_params(write_params(tmp_path))
    if stage == "preprocess":
        download(cfg, cfg.paths.raw, progress=False)
    if patched == "torch.save":
        monkeypatch.setattr(torch, "save", _half_written_then_disk_full)
    else:
        monkeypatch.setattr(os, "replace", _disk_full)
    with pytest.raises(TextclfError) as error:
        if stage == "preprocess":
            preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
        else:
            download(cfg, cfg.paths.raw, progress=False)
    # Each stage writes its output directory as a whole (textclf.atomic.staged_dir): it is named.
    target = cfg.paths.processed if stage == "preprocess" else cfg.paths.raw
    assert_one_line(str(error.value), f"cannot write {target}: No space left on device (nothing was written")
    assert_nothing_half_written(tmp_path, stage)


@pytest.fixture
def tiny_filesystem(tmp_path: Path):
    """A 4 KiB tmpfs at tmp_path/full (root only; skipped where mounting is not permitted)."""
    mount = tmp_path / "full"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_disk_during_preprocess_is_one_line_and_leaves_nothing(
    tmp_path: Path, tiny_filesystem: Path
) -> None:
    cfg = load_params(write_params(tmp_path, f"paths.processed={tiny_filesystem / 'processed'}"))
    download(cfg, cfg.paths.raw, progress=False)
    with pytest.raises(TextclfError) as error:
        preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
    assert_one_line(
        str(error.value), f"cannot write {cfg.paths.processed}: No space left on device (nothing was written"
    )
    assert isinstance(error.value.__cause__.__cause__, RuntimeError)  # torch.save's own error, not a fake
    assert list(tiny_filesystem.iterdir()) == []
