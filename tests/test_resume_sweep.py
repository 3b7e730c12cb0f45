"""Rerunning an interrupted Hydra sweep trains only the jobs that did not finish."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from textclf.pipeline import FINGERPRINT_TAG

from conftest import REPO_ROOT, shrink_overrides, subprocess_env

pytestmark = pytest.mark.slow

SWEEP_TIMEOUT_SECONDS = 300


def any_job_finished(database: Path) -> bool:
    """Polled while the sweep runs: plain SQLite reads, since an MLflow client would migrate
    the store's tables while the sweep is creating them."""
    if not database.exists():
        return False
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as connection:
            row = connection.execute(
                "SELECT count(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid"
                " WHERE runs.status = 'FINISHED' AND tags.key = ?",
                (FINGERPRINT_TAG,),
            ).fetchone()
    except sqlite3.OperationalError:  # no tables yet, or locked for a moment
        return False
    return row[0] > 0


def finished_jobs(uri: str) -> list:
    """Runs of jobs that went to the end (train and evaluate): FINISHED, with a fingerprint."""
    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("textclf").experiment_id], filter_string="attributes.status = 'FINISHED'"
    )
    return [r for r in runs if FINGERPRINT_TAG in r.data.tags]


def test_a_rerun_sweep_skips_finished_jobs_and_force_trains_again(tiny_archive, tmp_path: Path) -> None:
    archive, sha256 = tiny_archive
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "conf").symlink_to(REPO_ROOT / "conf")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = subprocess_env(MLFLOW_TRACKING_URI=uri)
    sweep = [sys.executable, "-m", "textclf", "-m", *shrink_overrides(archive, sha256), "seed=0,1,2"]

    # Start the 3-job sweep and kill it (the whole process group, no clean-up) once a job is done.
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(
            sweep, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + SWEEP_TIMEOUT_SECONDS
        while not any_job_finished(tmp_path / "mlflow.db"):
            assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first job never finished"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    done = {r.data.tags["hydra.job.num"]: r.info.run_id for r in finished_jobs(uri)}
    assert 1 <= len(done) < 3, "the sweep ended before it could be interrupted"

    # The same command again: finished jobs are skipped, the others train (the killed one from
    # its resume point, when it had finished an epoch; see train.resume_dir).
    result = subprocess.run(sweep, cwd=cwd, env=env, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_SECONDS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for number, run_id in done.items():
        assert f"textclf: skipped job {number} (" in result.stdout and run_id in result.stdout
    assert result.stdout.count("textclf: skipped job") == len(done)
    assert result.stdout.count("textclf: {'run_id'") == 3 - len(done)  # one summary per trained job
    finished = finished_jobs(uri)
    assert sorted(r.data.params["seed"] for r in finished) == ["0", "1", "2"]
    assert len({r.data.tags[FINGERPRINT_TAG] for r in finished}) == 3

    # TEXTCLF_FORCE=1 trains a finished job again.
    forced = subprocess.run(
        [*sweep[:-1], "seed=0"],
        cwd=cwd,
        env={**env, "TEXTCLF_FORCE": "1"},
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT_SECONDS,
    )
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-3000:]
    assert "skipped" not in forced.stdout
    seed_zero = [r for r in finished_jobs(uri) if r.data.params["seed"] == "0"]
    assert len(seed_zero) == 2 and len({r.data.tags[FINGERPRINT_TAG] for r in seed_zero}) == 1
