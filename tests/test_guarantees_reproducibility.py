"""Reproducibility on CPU, concurrency and provenance, end to end.

- Two `dvc repro` in two copies of the repository, at two commits with different params, run
  at the same time against one fresh SQLite MLflow store: both runs are complete (params,
  metrics, artifacts) and each is tagged with its commit, a clean tree and the data hash.
- Back at the older commit, `dvc repro` reruns train and evaluate and reproduces that
  commit's run: metrics.json equals the test metrics MLflow holds for it, and the weights
  equal (torch.equal, every tensor) those the other copy trained.
- Hydra jobs with the same config are bitwise equal, on one process and on two DDP processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_dvc_pipeline import STAGES, copy_repository, run, stages_run

from textclf.params import write_params

from conftest import REPO_ROOT, assert_same_weights, shrink_overrides, subprocess_env

pytestmark = pytest.mark.slow

PROCESS_TIMEOUT = 300
METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "loss")


def git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args]
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def commit_params(repo: Path, overrides: list[str], message: str) -> str:
    write_params(repo / "params.yaml", overrides, root=repo)
    git(repo, "commit", "-qam", message)
    return git(repo, "rev-parse", "HEAD")


def test_concurrent_repros_then_an_old_commit_reproduces_its_run(tiny_archive, tmp_path: Path) -> None:
    base = shrink_overrides(*tiny_archive)
    first = copy_repository(tmp_path / "first")
    commit_a = commit_params(first, [*base, "optimizer.lr=0.05"], "params A")
    commit_b = commit_params(first, [*base, "optimizer.lr=0.02"], "params B")
    second = tmp_path / "second"
    subprocess.run(["git", "clone", "-q", str(first), str(second)], check=True)
    git(second, "checkout", "-q", commit_a)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # fresh: both pipelines also create it
    env = subprocess_env(MLFLOW_TRACKING_URI=uri)
    repros = [
        subprocess.Popen(
            ["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for repo in (first, second)
    ]
    try:
        outputs = [process.communicate(timeout=PROCESS_TIMEOUT)[0] for process in repros]
    finally:
        for process in repros:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, output in zip(repros, outputs):
        assert process.returncode == 0, output[-4000:]
        assert stages_run(output) == list(STAGES)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("textclf").experiment_id
    runs = {r.data.tags["mlflow.source.git.commit"]: r for r in client.search_runs([experiment])}
    assert sorted(runs) == sorted([commit_a, commit_b])  # two runs, nothing lost or merged
    for commit, lr in ((commit_a, "0.05"), (commit_b, "0.02")):
        record = runs[commit]
        assert record.info.status == "FINISHED"
        assert record.data.params["optimizer.lr"] == lr
        assert record.data.tags["git_dirty"] == "false"
        assert {f"test/{key}" for key in METRICS} <= set(record.data.metrics)
        logged = {a.path for folder in (None, "evaluation") for a in client.list_artifacts(record.info.run_id, folder)}
        assert {"config.yaml", "evaluation/metrics.json"} <= logged
    assert runs[commit_a].data.tags["data_hash"] == runs[commit_b].data.tags["data_hash"]

    # The older commit, rebuilt where the newer one ran: DVC sees the params change.
    git(first, "checkout", "-q", commit_a)
    output = run(["dvc", "repro"], first, env)
    assert stages_run(output) == ["train", "evaluate"]
    metrics = json.loads((first / "reports" / "metrics.json").read_text())
    recorded = runs[commit_a].data.metrics
    assert {key: metrics[key] for key in METRICS} == {key: recorded[f"test/{key}"] for key in METRICS}
    assert_same_weights(first / "models" / "model.ckpt", second / "models" / "model.ckpt")
    assert (first / "reports" / "training_curves.csv").read_text() == (
        second / "reports" / "training_curves.csv"
    ).read_text()
    rerun = [r for r in client.search_runs([experiment]) if r.info.run_id not in {x.info.run_id for x in runs.values()}]
    assert [r.data.tags["mlflow.source.git.commit"] for r in rerun] == [commit_a]


def test_hydra_jobs_with_the_same_config_are_bitwise_equal_on_one_and_two_processes(
    tiny_archive, tmp_path: Path
) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "conf").symlink_to(REPO_ROOT / "conf")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Jobs 0, 1: one process; jobs 2, 3: two DDP processes (gloo). The run name only labels.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "textclf",
            "-m",
            *shrink_overrides(*tiny_archive),
            "trainer.accelerator=cpu",
            "trainer.devices=1,2",
            "tracking.run_name=first,again",
            "hydra.sweep.dir=sweep",
        ],
        # TEXTCLF_FORCE: train the repeated config again rather than skip it as finished.
        cwd=cwd,
        env=subprocess_env(MLFLOW_TRACKING_URI=uri, TEXTCLF_FORCE="1"),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (cwd / "sweep" / "2" / "train_ddp_process_1.log").read_text()
    for one, again in (("0", "1"), ("2", "3")):
        job, rerun = cwd / "sweep" / one, cwd / "sweep" / again
        assert_same_weights(job / "models" / "model.ckpt", rerun / "models" / "model.ckpt")
        for report in ("metrics.json", "training_curves.csv", "confusion.csv"):
            assert (job / "reports" / report).read_text() == (rerun / "reports" / report).read_text(), report
