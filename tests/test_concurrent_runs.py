"""Runs started at the same moment never share a directory, and evaluate scores only the
checkpoint that its MLflow run trained."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from tiny_run import tiny_run

from textclf.errors import TextclfError
from textclf.stages.evaluate import evaluate
from textclf.tracking import CHECKPOINT_TAG

from conftest import REPO_ROOT, shrink_overrides, subprocess_env

TIMEOUT = 300


def start_together(cwd: Path, env: dict[str, str], commands: list[list[str]]) -> list[str]:
    """Starts every command at once (same second: nothing in between but a fork), waits for all."""
    processes = [
        subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for command in commands
    ]
    outputs = [process.communicate(timeout=TIMEOUT)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return outputs


def workdir(tmp_path: Path) -> tuple[Path, str, dict[str, str]]:
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "conf").symlink_to(REPO_ROOT / "conf")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return cwd, uri, subprocess_env(MLFLOW_TRACKING_URI=uri)


def runs_by_seed(uri: str) -> dict[str, object]:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    return {run.data.params["seed"]: run for run in runs}


def assert_each_run_scored_its_own_checkpoint(uri: str, seeds: list[str]) -> set[str]:
    """Every seed's run is FINISHED with the test metrics of its own job directory, whose
    checkpoint is the one the run trained; returns the job directories."""
    runs = runs_by_seed(uri)
    assert sorted(runs) == sorted(seeds)
    directories = set()
    for run in runs.values():
        job = Path(run.data.tags["hydra.output_dir"])
        metrics = json.loads((job / "reports" / "metrics.json").read_text())
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test/accuracy"] == metrics["accuracy"]
        assert run.data.metrics["test/loss"] == metrics["loss"]
        reference = json.loads((job / "models" / "mlflow_run.json").read_text())
        assert reference["run_id"] == run.info.run_id
        checkpoint = hashlib.sha256((job / "models" / "model.ckpt").read_bytes()).hexdigest()
        assert run.data.tags[CHECKPOINT_TAG] == reference["checkpoint_sha256"] == checkpoint
        directories.add(str(job))
    assert len({run.data.metrics["test/loss"] for run in runs.values()}) == len(seeds)  # told apart
    return directories


@pytest.mark.slow
def test_two_runs_started_at_the_same_moment_get_their_own_directories_and_runs(tiny_archive, tmp_path: Path) -> None:
    cwd, uri, env = workdir(tmp_path)
    base = [sys.executable, "-m", "textclf", *shrink_overrides(*tiny_archive)]
    start_together(cwd, env, [[*base, "seed=0"], [*base, "seed=1"]])

    directories = assert_each_run_scored_its_own_checkpoint(uri, ["0", "1"])
    assert len(directories) == 2
    assert all(Path(d).parent.parent == cwd / "outputs" for d in directories)  # outputs/<date>/<time>-<id>
    assert not list(cwd.rglob("*.lock")) and not list(cwd.rglob("*.partial-*"))


@pytest.mark.slow
def test_two_sweeps_started_at_the_same_moment_get_their_own_directories(tiny_archive, tmp_path: Path) -> None:
    cwd, uri, env = workdir(tmp_path)
    base = [sys.executable, "-m", "textclf", "-m", *shrink_overrides(*tiny_archive)]
    start_together(cwd, env, [[*base, "seed=0"], [*base, "seed=1"]])

    directories = assert_each_run_scored_its_own_checkpoint(uri, ["0", "1"])
    sweeps = {Path(d).parent for d in directories}  # <sweep dir>/<job number>
    assert len(sweeps) == 2 and all(s.parent.parent == cwd / "multirun" for s in sweeps)
    assert not (cwd / "outputs").exists()


def test_evaluate_refuses_a_checkpoint_swapped_under_it(tiny_archive, tmp_path: Path) -> None:
    run = tiny_run(tmp_path, *tiny_archive, evaluated=False)
    cfg, models = run.cfg, run.cfg.paths.models
    checkpoint = models / "model.ckpt"
    reference_file = models / "mlflow_run.json"
    client = MlflowClient(run.uri)

    def no_test_metrics() -> bool:
        return not any(key.startswith("test/") for key in client.get_run(run.run_id).data.metrics)

    # Another checkpoint put in place of the one the run trained (here: one weight changed).
    swapped = torch.load(checkpoint, map_location="cpu", weights_only=True)
    name = next(iter(swapped["state_dict"]))
    swapped["state_dict"][name] = swapped["state_dict"][name] + 1.0
    torch.save(swapped, checkpoint)
    with pytest.raises(TextclfError, match="not the checkpoint MLflow run .* trained") as refused:
        evaluate(cfg, cfg.paths.processed, models, cfg.paths.reports)
    assert "\n" not in str(refused.value)
    assert not (cfg.paths.reports / "metrics.json").exists() and no_test_metrics()

    # mlflow_run.json rewritten to match it: the run's own tag still tells them apart.
    reference = json.loads(reference_file.read_text())
    reference["checkpoint_sha256"] = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    reference_file.write_text(json.dumps(reference))
    with pytest.raises(TextclfError, match="is not the one MLflow run .* trained .*; nothing logged to that run"):
        evaluate(cfg, cfg.paths.processed, models, cfg.paths.reports)
    assert no_test_metrics()

    # A pipeline job evaluating a directory another run wrote into.
    with pytest.raises(TextclfError, match="not of run other-run that this job trained"):
        evaluate(cfg, cfg.paths.processed, models, cfg.paths.reports, run_id="other-run")
