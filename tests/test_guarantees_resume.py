"""Resume after a crash: a training killed with SIGKILL (a real subprocess, after at least one
epoch) picks up from its last completed epoch when rerun, through the train stage and through
a Hydra job, goes on in the same MLflow run, and ends with the weights, curves and test
metrics of an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from textclf.config import load_params, validate
from textclf.params import compose, write_params
from textclf.stages.download import download
from textclf.stages.evaluate import evaluate
from textclf.stages.preprocess import preprocess
from textclf.stages.train import train

from conftest import REPO_ROOT, assert_same_weights, build_archive, shrink_overrides, subprocess_env

pytestmark = pytest.mark.slow

# Long enough that the kill lands well before the end, short enough to stay cheap: about
# 0.1 s per epoch here (a dozen epochs), after several seconds of process start-up.
EPOCHS = 12
PROCESS_TIMEOUT = 300


def overrides(archive: Path, sha256: str) -> list[str]:
    # One thread: the reference (in pytest's process) and the subprocesses use the same count.
    return [*shrink_overrides(archive, sha256), f"trainer.max_epochs={EPOCHS}", "train.num_threads=1"]


def paths(root: Path) -> list[str]:
    return [f"paths.{name}={root / name}" for name in ("raw", "processed", "models", "reports", "cache")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("corpus") / "20news-bydate.tar.gz"
    return path, build_archive(path, train_per_group=24, test_per_group=6)


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same training, never interrupted (in this process, a store of its own); evaluated."""
    root = tmp_path_factory.mktemp("uninterrupted")
    cfg = validate(
        compose([*overrides(*corpus), *paths(root), f"tracking.uri=sqlite:///{root / 'mlflow.db'}"], root=REPO_ROOT)
    )
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
    train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    return root


def kill_after_first_epoch(args: list[str], cwd: Path, env: dict[str, str], resume_points: Path) -> str:
    """Starts ``args``, waits for its first resume checkpoint, SIGKILLs it; returns its output."""
    log = cwd / f"killed-{time.monotonic_ns()}.log"
    with log.open("w") as handle:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while not list(resume_points.glob("*/last.ckpt")):
            assert process.poll() is None, f"exited before its first epoch ended:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no resume checkpoint appeared"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL, "training ended before it could be killed"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return log.read_text()


def completed(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def the_one_run(uri: str):
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    epochs = client.get_metric_history(run.info.run_id, "val/f1_macro")
    assert sorted({m.step for m in epochs}) == sorted(m.step for m in epochs)  # no epoch logged twice
    assert len(epochs) == EPOCHS
    return run


def test_a_killed_train_stage_resumes_to_the_uninterrupted_result(corpus, uninterrupted: Path, tmp_path: Path) -> None:
    params, cfg, uri, env = killed_stage(corpus, tmp_path)
    stage = stage_command("train", params)
    assert not cfg.paths.models.exists()  # killed: nothing half-written in the stage's outputs
    output = completed(stage, tmp_path, env)
    assert "train: resuming from" in output

    assert_same_weights(cfg.paths.models / "model.ckpt", uninterrupted / "models" / "model.ckpt")
    curves = (cfg.paths.reports / "training_curves.csv").read_text()
    assert curves == (uninterrupted / "reports" / "training_curves.csv").read_text()
    assert len(curves.splitlines()) == 1 + EPOCHS
    run = the_one_run(uri)
    assert json.loads((cfg.paths.models / "mlflow_run.json").read_text())["run_id"] == run.info.run_id
    assert list((cfg.paths.cache / "resume").glob("*/*")) == []  # finished: the resume point is gone


def test_a_killed_hydra_job_resumes_to_the_uninterrupted_result(corpus, uninterrupted: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "conf").symlink_to(REPO_ROOT / "conf")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = subprocess_env(MLFLOW_TRACKING_URI=uri)
    job = [sys.executable, "-m", "textclf", *overrides(*corpus), f"hydra.run.dir={cwd / 'job'}"]

    kill_after_first_epoch(job, cwd, env, cwd / ".cache" / "textclf" / "resume")
    output = completed(job, cwd, env)
    assert "train: resuming from" in output

    assert_same_weights(cwd / "job" / "models" / "model.ckpt", uninterrupted / "models" / "model.ckpt")
    metrics = json.loads((cwd / "job" / "reports" / "metrics.json").read_text())
    assert metrics == json.loads((uninterrupted / "reports" / "metrics.json").read_text())
    run = the_one_run(uri)
    assert run.data.metrics["test/accuracy"] == metrics["accuracy"]


def stage_command(module: str, params: Path) -> list[str]:
    return [sys.executable, "-m", f"textclf.stages.{module}", "--params", str(params)]


def killed_stage(corpus, tmp_path: Path) -> tuple[Path, object, str, dict[str, str]]:
    """A train stage SIGKILLed after its first resume point: (params, cfg, store URI, env)."""
    params = tmp_path / "params.yaml"
    write_params(params, [*overrides(*corpus), *paths(tmp_path)], root=REPO_ROOT)
    cfg = load_params(params)
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = subprocess_env(MLFLOW_TRACKING_URI=uri)
    kill_after_first_epoch(stage_command("train", params), tmp_path, env, cfg.paths.cache / "resume")
    return params, cfg, uri, env


def test_a_killed_training_is_marked_killed_by_the_next_stage_and_still_resumes(corpus, tmp_path: Path) -> None:
    params, cfg, uri, env = killed_stage(corpus, tmp_path)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert run.info.status == "RUNNING"  # what SIGKILL leaves

    # A stage that does not train (as when `dvc repro` restores train's outputs from its cache).
    output = completed(stage_command("preprocess", params), tmp_path, env)
    assert f"MLflow run {run.info.run_id} was left RUNNING by a training that died; marked KILLED" in output
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    (point,) = (cfg.paths.cache / "resume").glob("*/last.ckpt")  # kept for the rerun
    assert "marked KILLED" not in completed(stage_command("preprocess", params), tmp_path, env)  # once

    output = completed(stage_command("train", params), tmp_path, env)
    assert "train: resuming from" in output
    assert the_one_run(uri).info.run_id == run.info.run_id  # FINISHED, resumed, every epoch once
    assert list((cfg.paths.cache / "resume").iterdir()) == []  # no resume point, no lock file


def test_a_resume_point_whose_run_is_not_in_the_store_is_discarded(corpus, uninterrupted: Path, tmp_path: Path) -> None:
    params, cfg, uri, env = killed_stage(corpus, tmp_path)
    for store in tmp_path.glob("mlflow.db*"):  # replaced by a new, empty store at the same path
        store.unlink()

    output = completed(stage_command("train", params), tmp_path, env)
    assert "train: discarding the resume point" in output and "training from scratch" in output
    assert "resuming" not in output
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert run.info.status == "FINISHED" and "resumed" not in run.data.tags
    epochs = client.get_metric_history(run.info.run_id, "val/f1_macro")
    assert sorted(m.step for m in epochs) == sorted({m.step for m in epochs}) and len(epochs) == EPOCHS
    assert_same_weights(cfg.paths.models / "model.ckpt", uninterrupted / "models" / "model.ckpt")
