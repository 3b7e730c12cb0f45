"""MLflow: where runs go, and how the train and evaluate stages share one run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from textclf.config import TrackingConfig
from textclf.errors import TextclfError

RUN_FILE = "mlflow_run.json"  # written by train into the models directory, read by evaluate
DEFAULT_STORE = "mlflow.db"


def project_root() -> Path:
    """The repository the pipeline runs in.

    ``dvc exp run --queue`` workers run stages in a temporary copy of the repository and set
    $DVC_ROOT to the parent repository, so their runs land in the same store as all others.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(cfg: TrackingConfig) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///<repository root>/mlflow.db."""
    if cfg.uri is not None:
        return cfg.uri
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / DEFAULT_STORE}"


def default_artifact_location(uri: str) -> str | None:
    """For the embedded SQLite store, artifacts go beside it (not into the current directory,
    which for a queued DVC experiment is a temporary copy that is deleted afterwards)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def ensure_experiment(uri: str, name: str) -> str:
    """Returns the id of experiment ``name``, creating it (safe against a concurrent creator)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=default_artifact_location(uri))
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def git_commit(root: Path | None = None) -> str | None:
    """The checked-out commit (the experiment's baseline for a queued DVC run), if any."""
    baseline = os.environ.get("DVC_EXP_BASELINE_REV")
    if baseline:
        return baseline
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root or Path.cwd(),
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def run_tags(resolved: dict[str, Any], manifest: dict[str, Any]) -> dict[str, str]:
    """Provenance of a training run: code version, data version, model family."""
    return {
        "mlflow.source.git.commit": git_commit(project_root()) or "unknown",
        "data_hash": manifest["data_hash"],
        "model": resolved["model"]["_target_"].rsplit(".", 1)[-1],
    }


def write_run_reference(models_dir: Path, run_id: str, experiment_id: str) -> None:
    (models_dir / RUN_FILE).write_text(
        json.dumps({"run_id": run_id, "experiment_id": experiment_id}, indent=2) + "\n",
        encoding="utf-8",
    )


def read_run_reference(models_dir: Path) -> dict[str, str]:
    path = models_dir / RUN_FILE
    if not path.is_file():
        raise TextclfError(f"{path}: not found (run the train stage first)")
    return json.loads(path.read_text(encoding="utf-8"))
