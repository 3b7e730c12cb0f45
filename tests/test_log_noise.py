"""What a run prints: progress, results and warnings that call for action, each once (textclf.logs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, shrink_overrides, subprocess_env

# Lines seen before textclf.logs: none calls for action.
NOISE = (
    "litlogger",  # Lightning's advertisement
    "LeafSpec",  # Lightning's use of a deprecated torch API
    "estimate number of stepping batches",
    "Downloading artifacts",  # MLflow's bar per artifact read from a local store
    "cloudpickle",
    "INFO mlflow",  # "Creating initial MLflow database tables", "Validating input example ..."
    "[lightning.",  # a Lightning line again, through Hydra's root handler
    "No file hash info found",
)


def printed(command: list[str], cwd: Path, env: dict[str, str]) -> list[str]:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return [line for line in re.split(r"[\r\n]+", output) if line.strip()]


def assert_quiet(lines: list[str]) -> None:
    noisy = [line for line in lines if any(noise.lower() in line.lower() for noise in NOISE)]
    assert noisy == []
    repeated = sorted({line for line in lines if lines.count(line) > 1})
    assert repeated == []


@pytest.mark.slow
def test_a_hydra_run_and_predict_print_no_known_noise_and_no_line_twice(tiny_archive, tmp_path: Path) -> None:
    archive, sha256 = tiny_archive
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "conf").symlink_to(REPO_ROOT / "conf")
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in ("MLFLOW_LOGGING_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
        env.pop(name, None)  # the defaults a user has

    run = printed([sys.executable, "-m", "textclf", *shrink_overrides(archive, sha256)], cwd, env)
    assert_quiet(run)
    assert any(line.startswith(("GPU available", "INFO: GPU available")) for line in run)
    (summary,) = [line for line in run if line.startswith("textclf: {")]
    run_id = re.search(r"'run_id': '([0-9a-f]+)'", summary).group(1)

    predicted = printed(
        [sys.executable, "-m", "textclf.predict", "--run-id", run_id, "sail hull mast", "yeast flour oven"], cwd, env
    )
    assert_quiet(predicted)
    assert [line.split()[0] for line in predicted] == ["rec.boats", "talk.bread"]
