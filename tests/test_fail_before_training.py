"""Inputs that used to fail after a whole training (or deep inside it) stop before any work,
in one line naming the value and the fix: a class named like an output column, class names
that are not UTF-8, a validation split that rounds to nothing (preprocess); no device,
a GPU that is not there, a model too large for memory (train, the Hydra app)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from test_bad_input import (
    TRAIN,
    assert_cli_failed,
    assert_nothing_half_written,
    assert_one_line,
    corpus_members,
    file_member,
    run_cli,
    set_value,
    special_member,
    write_archive,
    write_params,
)

from textclf import predict, serving
from textclf.config import load_params
from textclf.errors import TextclfError
from textclf.resources import check_memory, parameter_bytes
from textclf.stages.download import download
from textclf.stages.preprocess import RESERVED_CLASS_NAMES, preprocess
from textclf.stages.train import train

from conftest import REPO_ROOT, subprocess_env

NOT_UTF8 = b"rec.caf\xe9".decode("utf-8", "surrogateescape")  # how tarfile decodes a Latin-1 name

BAD_CORPORA = {
    # row: (extra archive members, overrides, what the one line must say)
    "class-named-label": (
        [
            special_member(f"{TRAIN}/label", tarfile.DIRTYPE),
            file_member(f"{TRAIN}/label/1", b"Subject: x\n\nhull mast"),
        ],
        [],
        "class 'label': a class may not be named 'label', which is a column of the model's output",
    ),
    "class-named-probability": (
        [file_member(f"{TRAIN}/probability/1", b"Subject: x\n\nhull mast")],
        [],
        "class 'probability': a class may not be named 'probability'",
    ),
    "class-name-not-utf8": (
        [file_member(f"{TRAIN}/{NOT_UTF8}/1", b"Subject: x\n\nhull mast")],
        [],
        "class 'rec.caf\\xe9': its name is not valid UTF-8 (rename the folder or fix the label)",
    ),
    "empty-validation-split": (
        [],
        ["data.val_fraction=0.001"],
        "data.val_fraction=0.001 holds out no validation document from 18 training documents in 3 classes "
        "(at most 6 per class); set data.val_fraction to at least 0.17",
    ),
}


@pytest.mark.parametrize("row", list(BAD_CORPORA))
def test_a_corpus_that_would_fail_after_training_stops_preprocess(tmp_path: Path, row: str) -> None:
    extra, overrides, named = BAD_CORPORA[row]
    params = write_params(tmp_path, *overrides)
    archive = tmp_path / "raw" / "20news-bydate.tar.gz"
    write_archive(archive, [*corpus_members(), *extra])
    cfg = load_params(params)
    with pytest.raises(TextclfError) as error:
        preprocess(cfg, archive.parent, cfg.paths.processed)
    assert_one_line(str(error.value), named)
    str(error.value).encode("utf-8")  # printable: no surrogate left in the line
    assert_nothing_half_written(tmp_path, "preprocess")


def test_the_reserved_class_names_are_the_output_columns() -> None:
    assert set(RESERVED_CLASS_NAMES) == {serving.LABEL_COLUMN, predict.PROBABILITY_COLUMN}


@pytest.fixture
def prepared(tmp_path: Path):
    def build(*overrides: str):
        params = write_params(tmp_path, *overrides)
        cfg = load_params(params)
        download(cfg, cfg.paths.raw, progress=False)
        preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
        return params, cfg

    return build


def assert_nothing_started(tmp_path: Path) -> None:
    assert not (tmp_path / "mlflow.db").exists()  # not even the tracking store was opened
    assert not (tmp_path / "cache" / "resume").exists()
    assert_nothing_half_written(tmp_path, "train")


TRAIN_ROWS = {
    # row: (overrides, what the one line must say)
    "embed-dim-too-large": (
        ["model.embed_dim=1000000", "model.ngram_buckets=1000000"],
        "GiB of memory is available; lower model.embed_dim=1000000, model.ngram_buckets=1000000 (or encoder.max_vocab)",
    ),
    "gpu-without-gpu": (["trainer.accelerator=gpu"], "trainer.accelerator=gpu: no CUDA GPU is visible here"),
}


@pytest.mark.parametrize("row", list(TRAIN_ROWS))
def test_a_config_this_machine_cannot_train_stops_before_any_work(
    prepared, mlflow_uri: str, tmp_path: Path, row: str
) -> None:
    if row == "gpu-without-gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    overrides, named = TRAIN_ROWS[row]
    _, cfg = prepared(*overrides)
    started = time.monotonic()
    with pytest.raises(TextclfError) as error:
        train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    assert time.monotonic() - started < 30  # nothing was allocated: a 2-trillion-parameter table is never built
    assert_one_line(str(error.value), named)
    assert_nothing_started(tmp_path)


@pytest.mark.parametrize("devices", [0, "0", []], ids=["int", "string", "empty-list"])
def test_zero_devices_is_refused_by_the_params_check(tmp_path: Path, devices: object) -> None:
    params = write_params(tmp_path, edit=set_value(devices, "trainer", "devices"))
    with pytest.raises(TextclfError) as error:
        load_params(params)
    assert_one_line(str(error.value), str(params), f"trainer.devices: {devices!r} asks for no device")


def test_the_memory_estimate_counts_weights_and_adam_moments_without_allocating(tiny_config) -> None:
    from textclf.config import to_dict

    cfg = tiny_config("model.embed_dim=8", "model.ngram_buckets=64")
    resolved = to_dict(cfg)
    state = torch.random.get_rng_state()
    count, size = parameter_bytes(resolved["model"], vocab_size=100, num_classes=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # training's random draws are untouched
    assert count == (100 + 64) * 8 + 8 * 3 + 3  # embedding table, classifier weights and bias
    assert size == 4 * count + 4 * 100  # float32, plus the idf buffer
    check_memory(resolved, 100, 3, available=3 * size)  # weights and two moments: fits exactly
    with pytest.raises(TextclfError, match=r"at least 0\.0 GiB for its 1,339 parameters \(weights and optimizer state"):
        check_memory(resolved, 100, 3, available=3 * size - 1)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
@pytest.mark.parametrize("entry", ["train-stage", "hydra-app"])
def test_a_missing_gpu_is_one_line_from_the_train_stage_and_the_hydra_app(prepared, tmp_path: Path, entry: str) -> None:
    if entry == "train-stage":
        params, _ = prepared("trainer=gpu")
        result = run_cli("textclf.stages.train", params, tmp_path)
        assert_cli_failed(result, "train", "trainer.accelerator=gpu: no CUDA GPU is visible here")
        assert_nothing_started(tmp_path)
        return
    (tmp_path / "conf").symlink_to(REPO_ROOT / "conf")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "textclf",
            "trainer=gpu",
            f"hydra.run.dir={tmp_path / 'outputs'}",
            f"paths.cache={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"),
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: trainer.accelerator=gpu: no CUDA GPU"), (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists()  # not even the download started
