"""The real `dvc repro` and `dvc exp run` through all four stages, in a copy of this repo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from textclf.params import write_params

from conftest import REPO_ROOT, shrink_overrides, subprocess_env

pytestmark = pytest.mark.slow

STAGES = ("download", "preprocess", "train", "evaluate")


def copy_repository(target: Path) -> Path:
    """Copies the files of this repository that git would commit (tracked, and new files it
    does not ignore) into a fresh git repo at ``target``."""
    tracked = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, tracked):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    subprocess.run(["git", "add", "-A"], cwd=target, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=target, check=True)
    return target


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{output[-4000:]}"
    return output


def stages_run(output: str) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_repository(tmp_path / "repo")


def test_dvc_repro_runs_all_stages_then_only_what_changed(repo: Path, tiny_archive, tmp_path: Path) -> None:
    archive, sha256 = tiny_archive
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = subprocess_env(MLFLOW_TRACKING_URI=uri)
    write_params(repo / "params.yaml", shrink_overrides(archive, sha256), root=repo)

    first = run(["dvc", "repro"], repo, env)
    assert stages_run(first) == list(STAGES)
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert set(metrics) >= {"accuracy", "f1_macro", "precision_macro", "recall_macro", "loss"}
    assert all(0.0 <= metrics[key] <= 1.0 for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro"))
    assert metrics["loss"] >= 0

    client = MlflowClient(uri)
    (run_record,) = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert run_record.data.params["encoder.min_freq"] == "1"
    assert {"train/loss_epoch", "val/loss", "val/accuracy", "val/f1_macro", "test/accuracy", "test/f1_macro"} <= set(
        run_record.data.metrics
    )
    assert "config.yaml" in {a.path for a in client.list_artifacts(run_record.info.run_id)}
    logged = {a.path for a in client.list_artifacts(run_record.info.run_id, "evaluation")}
    assert {"evaluation/confusion.png", "evaluation/per_class_f1.png", "evaluation/training_curves.png"} <= logged
    assert (repo / "reports" / "per_class_f1.csv").read_text().startswith("class,f1\n")

    second = run(["dvc", "repro"], repo, env)
    assert stages_run(second) == []

    write_params(repo / "params.yaml", [*shrink_overrides(archive, sha256), "optimizer.lr=0.01"], root=repo)
    third = run(["dvc", "repro"], repo, env)
    assert stages_run(third) == ["train", "evaluate"]
    assert len(client.search_runs([run_record.info.experiment_id])) == 2

    shown = run(["dvc", "metrics", "show", "--json"], repo, env)
    assert "reports/metrics.json" in shown and "f1_macro" in shown


def test_dvc_exp_run_composes_params_from_conf(repo: Path, tiny_archive, tmp_path: Path) -> None:
    archive, sha256 = tiny_archive
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = subprocess_env(MLFLOW_TRACKING_URI=uri)
    overrides = shrink_overrides(archive, sha256, model="lstm")
    args = ["dvc", "exp", "run", "--name", "lstm-tiny"]
    for override in overrides:
        args += ["-S", override]
    output = run(args, repo, env)
    assert stages_run(output) == list(STAGES)
    params = (repo / "params.yaml").read_text()
    assert "textclf.models.lstm.LSTMClassifier" in params  # -S model=lstm reached params.yaml
    shown = run(["dvc", "exp", "show", "--json"], repo, env)
    assert "lstm-tiny" in shown
    client = MlflowClient(uri)
    (record,) = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert record.data.tags["model"] == "LSTMClassifier"
    assert "test/accuracy" in record.data.metrics


def test_a_dvc_experiment_of_a_clean_checkout_is_clean_and_named_and_a_source_edit_is_dirty(
    repo: Path, tiny_archive, tmp_path: Path
) -> None:
    """DVC rewrites params.yaml (and, stage by stage, dvc.lock) before train runs: neither makes
    the run dirty (its params record them); an edit of a tracked source file does."""
    archive, sha256 = tiny_archive
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = subprocess_env(MLFLOW_TRACKING_URI=uri)
    overrides = [argument for override in shrink_overrides(archive, sha256) for argument in ("-S", override)]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()

    run(["dvc", "exp", "run", "--name", "clean-tiny", *overrides], repo, env)
    source = repo / "src" / "textclf" / "models" / "fasttext.py"
    source.write_text(source.read_text() + "\n# an edit that is in no commit\n")
    assert stages_run(run(["dvc", "exp", "run", "--name", "edited-tiny", *overrides], repo, env)) == [
        "train",
        "evaluate",
    ]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    tags = {record.data.tags.get("dvc.exp_name"): record.data.tags for record in runs}
    assert set(tags) == {"clean-tiny", "edited-tiny"}
    assert tags["clean-tiny"]["git_dirty"] == "false"
    assert tags["edited-tiny"]["git_dirty"] == "true"
    assert tags["clean-tiny"]["dvc.baseline_rev"] == tags["edited-tiny"]["dvc.baseline_rev"] == head
    assert tags["clean-tiny"]["mlflow.source.git.commit"] == head
