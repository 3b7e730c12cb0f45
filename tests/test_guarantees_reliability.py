"""Reliability rows that the stage tests do not cover: an output directory is swapped in whole
or not at all, a full disk while writing reports leaves nothing behind, an unknown config group
is one line from `python -m textclf`, and the dirty flag counts only tracked files."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import textclf.atomic as atomic
from textclf.atomic import staged_dir
from textclf.errors import TextclfError
from textclf.provenance import git_dirty
from textclf.stages.download import download
from textclf.stages.evaluate import evaluate
from textclf.stages.preprocess import preprocess
from textclf.stages.train import train

from conftest import REPO_ROOT, subprocess_env


def contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_staged_directory_replaces_the_old_one_whole(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with staged_dir(target) as staging:
        (staging / "a.txt").write_text("old")
    with staged_dir(target) as staging:
        (staging / "b.txt").write_text("new")
    assert contents(target) == {"b.txt": b"new"}  # the new directory, not a merge
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old copy left


def test_a_failed_swap_keeps_the_old_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out"
    with staged_dir(target) as staging:
        (staging / "a.txt").write_text("old")
    real_replace = os.replace

    def replace(source: Any, destination: Any) -> None:
        name = Path(source).name
        if name.startswith("out.partial-") and not name.startswith("out.partial-old-") and Path(destination) == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # the new one cannot move in
        real_replace(source, destination)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(TextclfError) as error:
        with staged_dir(target) as staging:
            (staging / "b.txt").write_text("new")
    assert (
        str(error.value)
        == f"cannot write {target}: No space left on device (nothing was written; free space and rerun)"
    )
    assert contents(target) == {"a.txt": b"old"}  # put back, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


class FullDisk:
    """A file whose writes store part of the data, then fail as a full disk does."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def write(self, data: Any) -> int:
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def test_a_full_disk_while_writing_reports_leaves_nothing(
    tiny_config, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config("trainer.max_epochs=1")
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
    train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    before = contents(cfg.paths.reports)  # training_curves.csv
    real_fdopen = os.fdopen
    monkeypatch.setattr(atomic.os, "fdopen", lambda *args, **kwargs: FullDisk(real_fdopen(*args, **kwargs)))
    with pytest.raises(TextclfError) as error:
        evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write {cfg.paths.reports / 'per_class.json'}: No space left on device")
    assert contents(cfg.paths.reports) == before  # no report, no partial file


def test_an_unknown_config_group_is_one_line_from_the_hydra_app(tmp_path: Path) -> None:
    (tmp_path / "conf").symlink_to(REPO_ROOT / "conf")
    result = subprocess.run(
        [sys.executable, "-m", "textclf", "model=nope"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: In 'config': Could not find 'model/nope'; available options in 'model': fasttext, hf, linear, lstm, transformer"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]  # no outputs/ either


def test_the_dirty_flag_counts_tracked_changes_only(tmp_path: Path) -> None:
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    subprocess.run(["git", "add", "code.py"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "code"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.lock").write_text("outputs of a stage\n")  # untracked: not code
    assert git_dirty(tmp_path) == "false"
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_dirty(tmp_path) == "true"
    assert git_dirty(tmp_path / "..") in ("unknown", "true", "false")  # outside: no crash


def test_servers_the_project_starts_listen_on_loopback_only() -> None:
    """scripts/mlflow_server.sh (PostgreSQL and MLflow) binds 127.0.0.1; nothing the project
    ships binds every interface. (test_scale_out.py starts the real script where PostgreSQL
    can be had, and checks the URI it prints.)"""
    script = (REPO_ROOT / "scripts" / "mlflow_server.sh").read_text()
    assert "listen_addresses=127.0.0.1" in script
    hosts = [line.split("--host", 1)[1].split()[0] for line in script.splitlines() if "--host" in line]
    assert hosts == ["127.0.0.1"]
    shipped = [
        *REPO_ROOT.joinpath("scripts").iterdir(),
        *REPO_ROOT.joinpath("src").rglob("*.py"),
        REPO_ROOT / "README.md",
    ]
    assert [str(path) for path in shipped if "0.0.0.0" in path.read_text()] == []
