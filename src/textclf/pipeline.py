"""All four stages in one process, for Hydra runs and sweeps (`python -m textclf -m ...`).

DVC caches stage outputs for `dvc repro`; a Hydra sweep has no DVC, so this module caches
the two data stages itself, keyed by what determines their output:
  <paths.cache>/downloads/<sha256>/<file>   every verified download, by its checksum
  <paths.cache>/raw/<source key>/           the download stage's output for one source config
  <paths.cache>/processed/<key>/            key = hash(the source's content hash, the data and
                                            encoder params, format version)
Jobs with equal data settings reuse one processed dataset; any difference gets its own.
Models and reports go to each job's own output directory.

A job that runs to the end (train and evaluate) tags its MLflow run with its fingerprint: a
hash of the resolved config (less ``paths``, ``tracking`` and the progress bar, which change
where things go or what is shown, not the model) and of the processed data. Rerunning a sweep
skips every job whose fingerprint already has a FINISHED run (see ``__main__``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from textclf import metrics
from textclf.config import Config, to_dict
from textclf.data.encoded import MANIFEST_FILE, read_manifest
from textclf.locks import path_lock
from textclf.resources import check_devices
from textclf.resume import sweep_abandoned
from textclf.stages.download import download
from textclf.stages.evaluate import evaluate
from textclf.stages.preprocess import FORMAT_VERSION, preprocess
from textclf.stages.train import train
from textclf.tracking import TrackingStore, check_tracking_uri, tracking_uri

FINGERPRINT_TAG = "textclf.fingerprint"
# Config keys that never change the trained model: excluded from the fingerprint.
# ensemble: an ensemble preset's settings, which reach a member's model only through the keys they
# set (the pretrained member's model.name), fingerprinted there.
NOT_FINGERPRINTED = {"paths": None, "tracking": None, "ensemble": None, "trainer": {"enable_progress_bar"}}


def _key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def processed_key(cfg: Config, content_sha256: str) -> str:
    """Identifies a processed dataset: equal keys mean byte-identical preprocess outputs."""
    resolved = to_dict(cfg)
    identity = {
        "content_sha256": content_sha256,
        "data": resolved["data"],
        "encoder": resolved["encoder"],
        "format_version": FORMAT_VERSION,
    }
    return _key(identity)


def raw_directory(cfg: Config) -> Path:
    """Where jobs with ``cfg``'s data settings find the download stage's output."""
    return cfg.paths.cache / "raw" / _key({"source": to_dict(cfg)["data"]})


def prepare_data(cfg: Config, progress: bool = True) -> Path:
    """Returns the processed directory for ``cfg``, downloading and preprocessing if needed.

    The download stage runs every time (verified downloads are kept, so it fetches nothing
    twice; local inputs are hashed again, so an edited file is seen). A lock per entry
    (``<entry>.lock``, there while held) makes concurrent jobs (parallel launchers) wait for
    one writer.
    """
    cache = cfg.paths.cache
    cache.mkdir(parents=True, exist_ok=True)
    raw_dir = raw_directory(cfg)
    with path_lock(f"{raw_dir}.lock"):  # held while preprocess reads it (always taken first)
        record = download(cfg, raw_dir, progress=progress)
        processed = cache / "processed" / processed_key(cfg, record.content_sha256)
        with path_lock(f"{processed}.lock"):
            if not (processed / MANIFEST_FILE).is_file():
                preprocess(cfg, raw_dir, processed)
    return processed


def fingerprint(cfg: Config, processed: Path) -> str:
    """Identifies what a job computes: equal fingerprints mean the same config on the same data."""
    resolved = to_dict(cfg)
    for section, keys in NOT_FINGERPRINTED.items():
        if keys is None:
            resolved.pop(section, None)
        else:
            resolved[section] = {k: v for k, v in resolved[section].items() if k not in keys}
    identity = {"config": resolved, "data_hash": read_manifest(processed)["data_hash"]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def finished_run(cfg: Config, job_fingerprint: str) -> dict[str, Any] | None:
    """The newest FINISHED run of ``cfg``'s experiment tagged with ``job_fingerprint``, as the
    summary ``run_pipeline`` would return (run id, train.monitor and its best value); None if none."""
    store = TrackingStore(tracking_uri(cfg.tracking))
    # First, under the store lock: a client opens the store, which creates a new SQLite store's
    # tables, and parallel sweep jobs doing that at once break its migration.
    experiment_id = store.ensure_experiment(cfg.tracking.experiment_name)
    runs = store.search_runs(
        [experiment_id],
        filter_string=f"tags.`{FINGERPRINT_TAG}` = '{job_fingerprint}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    run_id = runs[0].info.run_id
    monitor = cfg.train.monitor
    values = [m.value for m in store.get_metric_history(run_id, monitor)]
    return {"run_id": run_id, "monitor": monitor, "best_score": metrics.best(monitor, values) if values else 0.0}


def run_pipeline(
    cfg: Config,
    job_dir: Path,
    tags: dict[str, str] | None = None,
    callbacks: list[Callback] | None = None,
    skip_finished: bool = False,
) -> dict[str, Any]:
    """download -> preprocess (cached) -> train -> evaluate; outputs under ``job_dir``.

    ``tags`` are added to the job's MLflow run, ``callbacks`` to its Trainer. With
    ``skip_finished``, a config whose fingerprint already has a FINISHED run is not trained
    again: the summary is that run's, with ``skipped: True``."""
    check_tracking_uri(tracking_uri(cfg.tracking))  # before any work (train checks again, after the data)
    check_devices(cfg.trainer)
    sweep_abandoned(cfg)  # runs of trainings that died: KILLED, also when this job is skipped
    processed = prepare_data(cfg)
    job_fingerprint = fingerprint(cfg, processed)
    if skip_finished:
        previous = finished_run(cfg, job_fingerprint)
        if previous is not None:
            return {**previous, "skipped": True}
    models_dir, reports_dir = job_dir / "models", job_dir / "reports"
    summary = train(cfg, processed, models_dir, reports_dir, tags=tags, callbacks=callbacks)
    if summary is None:  # a non-zero DDP rank: rank 0 evaluates
        return {}
    scores = evaluate(cfg, processed, models_dir, reports_dir, run_id=summary.run_id)
    tag_fingerprint(cfg, summary.run_id, job_fingerprint)  # last: only a whole job counts as done
    return {**asdict(summary), **{f"test_{key}": value for key, value in scores.items()}}


def tag_fingerprint(cfg: Config, run_id: str, job_fingerprint: str) -> None:
    TrackingStore(tracking_uri(cfg.tracking)).set_tag(run_id, FINGERPRINT_TAG, job_fingerprint)
