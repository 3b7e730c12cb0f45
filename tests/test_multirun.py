"""Hydra multirun: `python -m textclf -m ...` runs the whole pipeline per job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO_ROOT, TINY_MODELS, shrink_overrides, subprocess_env

pytestmark = pytest.mark.slow


def sweep(cwd: Path, env: dict[str, str], *overrides: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "textclf", "-m", *overrides]
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def processed_entries(cwd: Path) -> list[str]:
    return sorted(p.name for p in (cwd / ".cache" / "textclf" / "processed").iterdir() if p.is_dir())


def test_multirun_gives_one_mlflow_run_per_job_and_shares_processed_data(tiny_archive, tmp_path: Path) -> None:
    archive, sha256 = tiny_archive
    cwd = tmp_path / "work"
    (cwd).mkdir()
    (cwd / "conf").symlink_to(REPO_ROOT / "conf")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = subprocess_env(MLFLOW_TRACKING_URI=uri)
    # Model-specific shrink keys differ, so the sweep shrinks what both models share.
    shared = [o for o in shrink_overrides(archive, sha256) if not o.startswith("model")]

    sweep(cwd, env, *shared, "model=fasttext,lstm", "model.embed_dim=8")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("textclf").experiment_id
    runs = client.search_runs([experiment])
    assert len(runs) == 2
    assert sorted(r.data.tags["model"] for r in runs) == ["FastText", "LSTMClassifier"]
    assert all(r.info.status == "FINISHED" and "test/accuracy" in r.data.metrics for r in runs)
    assert sorted(r.data.tags["hydra.job.num"] for r in runs) == ["0", "1"]
    assert all(f"model={r.data.tags['model'][:4].lower()}" in r.data.tags["hydra.overrides"] for r in runs)
    assert len({r.data.tags["hydra.output_dir"] for r in runs}) == 2  # one output dir per job
    assert len(processed_entries(cwd)) == 1  # equal data params: preprocessed once

    # Different preprocessing params must never reuse a processed dataset.
    sweep(
        cwd,
        env,
        *[o for o in shared if not o.startswith("encoder.min_freq")],
        "encoder.min_freq=1,2",
        *TINY_MODELS["fasttext"],
    )
    assert len(client.search_runs([experiment])) == 4
    assert len(processed_entries(cwd)) == 2  # min_freq=1 reused, min_freq=2 is new


def test_help_lists_config_groups() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "textclf", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert result.returncode == 0
    for group in (
        "model: fasttext, hf, linear, lstm, transformer",
        "optimizer: adam, adamw, sgd",
        "trainer: cpu, ddp, gpu",
    ):
        assert group in result.stdout
