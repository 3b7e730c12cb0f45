"""All four stages in one process, for Hydra runs and sweeps (`python -m textclf -m ...`).

DVC caches stage outputs for `dvc repro`; a Hydra sweep has no DVC, so this module caches
the two data stages itself, keyed by what determines their output:
  <paths.cache>/downloads/<sha256>/<archive>          one verified archive per checksum
  <paths.cache>/processed/<key>/                      key = hash(archive sha256, data.* params
                                                      that shape preprocessing, format version)
Jobs with equal data settings reuse one processed dataset; any difference gets its own.
Models and reports go to each job's own output directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from filelock import FileLock

from textclf.config import Config
from textclf.data.encoded import MANIFEST_FILE
from textclf.stages.download import download
from textclf.stages.evaluate import evaluate
from textclf.stages.preprocess import FORMAT_VERSION, PREPROCESS_PARAMS, preprocess
from textclf.stages.train import train


def processed_key(cfg: Config) -> str:
    """Identifies a processed dataset: equal keys mean byte-identical preprocess outputs."""
    identity = {
        "archive_sha256": cfg.data.sha256.lower(),
        "params": cfg.data.model_dump(include=PREPROCESS_PARAMS, mode="json"),
        "format_version": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def prepare_data(cfg: Config, progress: bool = True) -> Path:
    """Returns the processed directory for ``cfg``, downloading and preprocessing if needed.

    A file lock per entry makes concurrent jobs (parallel launchers) wait for one writer.
    """
    cache = cfg.paths.cache
    cache.mkdir(parents=True, exist_ok=True)
    raw_dir = cache / "downloads" / cfg.data.sha256.lower()
    with FileLock(str(raw_dir) + ".lock"):
        if not (raw_dir / cfg.data.archive_name).is_file():
            download(cfg.data, raw_dir, progress=progress)
    processed = cache / "processed" / processed_key(cfg)
    with FileLock(str(processed) + ".lock"):
        if not (processed / MANIFEST_FILE).is_file():
            preprocess(cfg.data, raw_dir / cfg.data.archive_name, processed)
    return processed


def run_pipeline(cfg: Config, job_dir: Path, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """download -> preprocess (cached) -> train -> evaluate; outputs under ``job_dir``.

    ``tags`` are added to the job's MLflow run."""
    processed = prepare_data(cfg)
    models_dir, reports_dir = job_dir / "models", job_dir / "reports"
    summary = train(cfg, processed, models_dir, reports_dir, tags=tags)
    if not summary:  # a non-zero DDP rank: rank 0 evaluates
        return {}
    metrics = evaluate(cfg, processed, models_dir, reports_dir)
    return {**summary, **{f"test_{key}": value for key, value in metrics.items()}}
