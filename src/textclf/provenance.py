"""What a training run records about where it came from: the repository and its code (git
commit, dirty flag), the DVC experiment that ran it, the data, the library versions, the
platform and the device. Imports nothing of textclf."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# Written by DVC before the stages run (`dvc exp run -S ...` rewrites params.yaml, every stage
# rewrites dvc.lock) and recorded by the run anyway (params.yaml is the run's params; dvc.lock
# records outputs): a change to these alone does not make the tree dirty. Paths from the root.
NOT_CODE = ("params.yaml", "dvc.lock")
# Set by DVC in the environment of the stages of `dvc exp run` (dvc/repo/experiments/queue/base.py).
EXPERIMENT_NAME_ENV, BASELINE_REV_ENV = "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"
HELD_OUT_TAG = "data_held_out_sha256"  # a run tag: which documents validation and test held (manifest.json)
EXPERIMENT_NAME_TAG, BASELINE_REV_TAG = "dvc.exp_name", "dvc.baseline_rev"


def project_root() -> Path:
    """The repository the pipeline runs in.

    ``dvc exp run --queue`` workers run stages in a temporary copy of the repository and set
    $DVC_ROOT to the parent repository, so their runs land in the same store as all others.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def git_commit(root: Path | None = None) -> str | None:
    """The checked-out commit (the experiment's baseline for a queued DVC run), if any."""
    baseline = os.environ.get(BASELINE_REV_ENV)
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


def git_dirty(root: Path | None = None) -> str:
    """ "true" when code or config differs from the checked-out commit beyond what the run's own
    params record, "false" for a clean tree, "unknown" outside a git checkout.

    Counts tracked files (`git status --porcelain --untracked-files=no`) but NOT_CODE:
    untracked files are the stages' own outputs (data/, models/, reports/, caches), not code,
    and params.yaml and dvc.lock are rewritten by `dvc exp run` and `dvc repro` themselves."""
    excluded = [f":(top,exclude){path}" for path in NOT_CODE]
    try:
        result = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)", *excluded],
            cwd=root or Path.cwd(),
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return "true" if result.stdout.strip() else "false"


def dvc_experiment() -> dict[str, str]:
    """The DVC experiment running this stage (``dvc.exp_name``, ``dvc.baseline_rev``); empty
    outside `dvc exp run`."""
    found = {
        EXPERIMENT_NAME_TAG: os.environ.get(EXPERIMENT_NAME_ENV),
        BASELINE_REV_TAG: os.environ.get(BASELINE_REV_ENV),
    }
    return {tag: value for tag, value in found.items() if value}


# MLflow tag -> distribution whose version it records.
VERSION_TAGS = {
    "version.torch": "torch",
    "version.lightning": "lightning",
    "version.torchmetrics": "torchmetrics",
    "version.mlflow": "mlflow",
    "version.hydra-core": "hydra-core",
    "version.dvc": "dvc",
    "version.numpy": "numpy",
}


def package_versions() -> dict[str, str]:
    versions = {"version.python": platform.python_version()}
    for tag, distribution in VERSION_TAGS.items():
        try:
            versions[tag] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[tag] = "not installed"
    return versions


def device_name(accelerator: str) -> str:
    """What trainer.accelerator runs on here: "cpu", "mps" or the CUDA device's name."""
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        return f"cuda: {name}" + (f" (x{count})" if count > 1 else "")
    if accelerator in ("mps", "auto") and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def run_tags(resolved: dict[str, Any], manifest: dict[str, Any]) -> dict[str, str]:
    """Provenance of a training run: code version (commit, dirty tree), the DVC experiment,
    data (name and hash), model family, library versions, platform and device."""
    return {
        "mlflow.source.git.commit": git_commit(project_root()) or "unknown",
        "git_dirty": git_dirty(),
        **dvc_experiment(),
        "data_name": resolved["data"]["corpus"],
        "data_hash": manifest["data_hash"],
        # What the source held (a local folder or file is hashed by the download stage).
        "data_content_sha256": str(manifest.get("content_sha256")),
        # Which documents were held out for validation and test (textclf.data.splits.held_out_sha256).
        HELD_OUT_TAG: str(manifest.get("held_out_sha256")),
        "model": resolved["model"]["_target_"].rsplit(".", 1)[-1],
        **package_versions(),
        "platform": platform.platform(),
        "device": device_name(str(resolved["trainer"].get("accelerator", "cpu"))),
    }
