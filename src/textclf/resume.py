"""Resume points of unfinished trainings, and what becomes of them when their training died.

    <paths.cache>/resume/<key>/         last.ckpt, best/, run.json (MLflow run, experiment, store)
    <paths.cache>/resume/<key>.lock     exists while the training of <key> runs (textclf.locks)

A training holds the lock of its resume point while it runs, so "lock free" is "training dead"
(killed, or its machine lost). At the start of every stage (and of every `python -m textclf`
job) ``sweep_abandoned`` settles the dead ones: their MLflow run, left RUNNING, is marked
KILLED (and the point kept, so rerunning the same training resumes it, and the run becomes
RUNNING again); a dead point with nothing to resume (killed before its first resume point),
or untouched for longer than ``train.resume_keep_s``, is deleted. Nothing to settle costs a
directory listing: the MLflow store is opened only for a run that needs marking.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from textclf.atomic import write_json
from textclf.config import Config
from textclf.errors import first_line
from textclf.locks import path_lock
from textclf.redact import mask_userinfo
from textclf.tracking import TrackingStore, check_tracking_uri, tracking_uri

RESUME_DIR, LAST_CHECKPOINT = "resume", "last.ckpt"  # <paths.cache>/resume/<key>/last.ckpt
RESUME_RUN_FILE = "run.json"  # {"run_id", "experiment_id", "tracking_uri" (userinfo masked)}
ABANDONED = "abandoned"  # marker: the run of this dead resume point is marked KILLED


def lock_file(resume: Path) -> Path:
    return resume.with_name(f"{resume.name}.lock")


@contextmanager
def resume_lock(resume: Path) -> Iterator[None]:
    """One training per resume point at a time (a second run of the same config waits)."""
    lock = lock_file(resume)

    def waiting() -> None:
        print(f"train: waiting for another training of this config to finish ({lock})", flush=True)

    with path_lock(lock, on_wait=waiting):
        yield


def record_run(resume: Path, run_id: str, experiment_id: str, uri: str) -> None:
    """Names the MLflow run a resume point belongs to (written under its lock)."""
    write_json(
        resume / RESUME_RUN_FILE, {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": mask_userinfo(uri)}
    )
    (resume / ABANDONED).unlink(missing_ok=True)  # its training runs again


def recorded_run(resume: Path) -> dict[str, Any] | None:
    try:
        return json.loads((resume / RESUME_RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or cut short by a kill before textclf.atomic
        return None


def run_to_resume(resume: Path, uri: str, experiment_id: str) -> str | None:
    """The run id the resume point names, if that very run is in the store at ``uri``, in
    experiment ``experiment_id`` and not deleted; else None (e.g. mlflow.db was replaced)."""
    from mlflow.exceptions import MlflowException

    reference = recorded_run(resume)
    if reference is None or reference.get("tracking_uri") != mask_userinfo(uri):
        return None
    try:
        run = TrackingStore(uri).get_run(reference["run_id"])
    except MlflowException:
        return None
    if run.info.experiment_id != reference["experiment_id"] or run.info.experiment_id != experiment_id:
        return None
    if run.info.lifecycle_stage != "active":
        return None
    return run.info.run_id


def sweep_abandoned(cfg: Config, exclude: Path | None = None) -> None:
    """Settles the resume points of dead trainings under ``cfg.paths.cache`` (see the module
    docstring); ``exclude`` is the caller's own resume point, which train decides about."""
    if any(os.environ.get(name, "0") != "0" for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID")):
        return  # a DDP rank other than 0 (before its Trainer knows): rank 0 sweeps, and alone opens the store
    root = (cfg.paths.cache / RESUME_DIR).absolute()
    try:
        entries = sorted(path for path in root.iterdir() if path.is_dir())
    except OSError:
        return
    uri = tracking_uri(cfg.tracking)
    for entry in entries:
        if exclude is not None and entry == exclude.absolute():
            continue
        with path_lock(lock_file(entry), wait=False) as free:
            if free and entry.is_dir():  # else alive, or finished meanwhile
                _settle(entry, uri, cfg.train.resume_keep_s)


def _settle(entry: Path, uri: str, keep_s: float | None) -> None:
    reference = recorded_run(entry)
    last = entry / LAST_CHECKPOINT
    # Age: since the training last wrote (marking it abandoned touches the directory itself).
    files = [path for path in (last, entry / RESUME_RUN_FILE) if path.exists()] or [entry]
    age = time.time() - max(path.stat().st_mtime for path in files)
    resumable = last.is_file()
    expired = keep_s is not None and age > keep_s
    ours = reference is not None and reference.get("tracking_uri") == mask_userinfo(uri)
    if ours and not (entry / ABANDONED).exists():
        if _mark_killed(uri, reference["run_id"]) and resumable and not expired:
            print(
                f"textclf: MLflow run {reference['run_id']} was left RUNNING by a training that died; "
                f"marked KILLED (rerun it to resume from {last})",
                flush=True,
            )
        (entry / ABANDONED).touch()
    if not resumable or expired:
        shutil.rmtree(entry, ignore_errors=True)
        if resumable:
            print(
                f"textclf: deleted the resume point {entry} of a training that died {age / 3600:.1f} h ago "
                f"(train.resume_keep_s={keep_s:g})",
                flush=True,
            )


def _mark_killed(uri: str, run_id: str) -> bool:
    """Sets run ``run_id`` KILLED if it is still RUNNING; True if it was. A store that cannot
    be reached is left for the stage itself to report."""
    from mlflow.exceptions import MlflowException

    try:
        check_tracking_uri(uri)
        store = TrackingStore(uri)
        try:
            run = store.get_run(run_id)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":  # another store at this path now
                return False
            raise
        if run.info.status != "RUNNING":
            return False
        store.set_terminated(run_id, "KILLED")
        return True
    except Exception as error:  # the store fails: one line here, the stage reports it properly
        print(f"textclf: could not mark MLflow run {run_id} KILLED ({first_line(error)[:200]})", flush=True)
        return False
