"""The resume points of trainings that died: their runs are marked KILLED, live trainings are
left alone, nothing opens the MLflow store when there is nothing to do, and a dead point is
deleted once older than train.resume_keep_s (end to end, with a real SIGKILL:
test_guarantees_resume.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mlflow import MlflowClient

from textclf.locks import path_lock
from textclf.resume import LAST_CHECKPOINT, lock_file, record_run, sweep_abandoned


def resume_point(cfg, client: MlflowClient, experiment_id: str, uri: str, key: str, resumable: bool = True):
    """A resume point as a training leaves it (its RUNNING run, the reference, last.ckpt)."""
    run = client.create_run(experiment_id)
    point = (cfg.paths.cache / "resume" / key).absolute()
    point.mkdir(parents=True)
    record_run(point, run.info.run_id, experiment_id, uri)
    if resumable:
        (point / LAST_CHECKPOINT).write_bytes(b"state")
    return point, run.info.run_id


def test_dead_trainings_are_marked_killed_live_ones_left_and_old_points_deleted(
    tiny_config, tmp_path: Path, capsys
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tiny_config(f"tracking.uri={uri}", "train.resume_keep_s=3600")
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("textclf")
    dead, dead_run = resume_point(cfg, client, experiment_id, uri, "dead")
    live, live_run = resume_point(cfg, client, experiment_id, uri, "live")
    early, early_run = resume_point(cfg, client, experiment_id, uri, "early", resumable=False)

    with path_lock(lock_file(live)):  # a training that runs holds its lock
        sweep_abandoned(cfg)
    status = {run: client.get_run(run).info.status for run in (dead_run, live_run, early_run)}
    assert status == {dead_run: "KILLED", live_run: "RUNNING", early_run: "KILLED"}
    assert (dead / LAST_CHECKPOINT).is_file() and (live / LAST_CHECKPOINT).is_file()
    assert not early.exists()  # killed before its first resume point: nothing to resume
    assert f"MLflow run {dead_run} was left RUNNING" in capsys.readouterr().out
    assert not list((cfg.paths.cache / "resume").glob("*.lock"))

    # Nothing left to do: the store is not opened (MLflow would create a new one at its path).
    os.rename(tmp_path / "mlflow.db", tmp_path / "moved.db")
    with path_lock(lock_file(live)):
        sweep_abandoned(cfg)
    assert not (tmp_path / "mlflow.db").exists() and dead.exists()

    # Untouched for longer than train.resume_keep_s: deleted.
    old = time.time() - 3601
    for path in dead.iterdir():
        os.utime(path, (old, old))
    with path_lock(lock_file(live)):
        sweep_abandoned(cfg)
    assert not dead.exists() and live.exists()
    assert f"deleted the resume point {dead} of a training that died 1.0 h ago" in capsys.readouterr().out


def test_a_resume_point_of_another_store_is_left_to_it(tiny_config, tmp_path: Path) -> None:
    ours, theirs = (f"sqlite:///{tmp_path / name}" for name in ("ours.db", "theirs.db"))
    cfg = tiny_config(f"tracking.uri={ours}")
    client = MlflowClient(theirs)
    point, run_id = resume_point(cfg, client, client.create_experiment("textclf"), theirs, "theirs")
    sweep_abandoned(cfg)
    assert client.get_run(run_id).info.status == "RUNNING" and point.exists()
    assert not (tmp_path / "ours.db").exists()
