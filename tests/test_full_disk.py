"""A really full filesystem (a tmpfs of a few hundred KB, mounted as root) under the artifact
store and under reports/: one line naming what is full, and nothing half-written. Skipped
where mounting is not permitted; test_guarantees_reliability.py covers the same writes with
the error a full disk raises, everywhere."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from textclf.errors import TextclfError
from textclf.stages.download import download
from textclf.stages.evaluate import evaluate
from textclf.stages.preprocess import preprocess
from textclf.stages.train import train


@contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``directory`` for the block (skips the test where
    mounting is not permitted)."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path, leave: int) -> None:
    """Writes a filler file into ``directory`` until about ``leave`` bytes are free."""
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    (directory / "filler").write_bytes(b"\0" * max(0, free - leave))


def contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_full_artifact_store_is_named_and_models_is_not_written(tiny_config, mlflow_uri: str, tmp_path: Path) -> None:
    cfg = tiny_config("trainer.max_epochs=1")
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
    # The SQLite store's artifacts go to mlartifacts/ beside mlflow.db. Train logs the config
    # (a few KB) there; evaluate the model (its checkpoint, the package's code: about 360 KB).
    with tmpfs(tmp_path / "mlartifacts", "128k") as artifacts:

        def assert_names_the_full_store(error: pytest.ExceptionInfo[TextclfError]) -> None:
            message = str(error.value)
            assert "\n" not in message
            assert message.startswith(f"cannot write to the MLflow artifact store {artifacts.as_uri()}/"), message
            assert "No space left on device" in message

        fill(artifacts, leave=0)
        with pytest.raises(TextclfError) as error:
            train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
        assert_names_the_full_store(error)
        assert not cfg.paths.models.exists()  # the staged models/ was dropped
        assert list(tmp_path.glob("models.partial*")) == []

        (artifacts / "filler").unlink()  # room for the config, not for the model
        train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
        with pytest.raises(TextclfError) as error:
            evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
        assert_names_the_full_store(error)


def test_a_full_reports_filesystem_leaves_every_report_as_it_was(tiny_config, mlflow_uri: str, tmp_path: Path) -> None:
    cfg = tiny_config("trainer.max_epochs=1")
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
    with tmpfs(cfg.paths.reports, "256k") as reports:
        train(cfg, cfg.paths.processed, cfg.paths.models, reports)
        # Room for the small reports (a page each), not for confusion.png (about 20 KB).
        fill(reports, leave=12 * 1024)
        before = contents(reports)  # training_curves.csv and the filler
        with pytest.raises(TextclfError) as error:
            evaluate(cfg, cfg.paths.processed, cfg.paths.models, reports)
        message = str(error.value)
        assert "\n" not in message
        assert message.startswith(f"cannot write {reports}/") and "No space left on device" in message, message
        assert "nothing was written" in message
        assert contents(reports) == before  # true: no report, no partial file
