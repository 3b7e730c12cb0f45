"""A tracking store that cannot be used stops every entry point at once, in one line naming it.

Each entry point (the train and evaluate stages, the Hydra app, compare, predict) meets each
broken store: a server nobody listens on (MLflow would retry it for minutes), a `mlflow.db`
of random bytes, one on a read-only filesystem (a tmpfs remounted read-only: chmod does not
bind root, who runs these tests), and, for evaluate, the store train logged to deleted
before evaluate runs. Every row exits 1 with one `error:` line on stderr, no traceback,
and well before the subprocess timeout (a real retry loop would outlast it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_bad_input import closed_port, write_params

from textclf.config import load_params
from textclf.errors import TextclfError
from textclf.stages.download import download
from textclf.stages.preprocess import preprocess
from textclf.stages.train import train
from textclf.tracking import check_tracking_uri, ensure_experiment, store_errors

from conftest import REPO_ROOT, subprocess_env

FAST = 60  # seconds: far below MLflow's retries of an unreachable server, far above a check

# entry point -> (module, stage name in the error line, arguments)
ENTRY_POINTS = {
    "train": ("textclf.stages.train", "[train] ", ["--params", "{params}"]),
    "evaluate": ("textclf.stages.evaluate", "[evaluate] ", ["--params", "{params}"]),
    "hydra-app": ("textclf", "", ["hydra.run.dir={root}/outputs", "trainer.enable_progress_bar=false"]),
    "compare": ("textclf.compare", "[compare] ", []),
    "predict": ("textclf.predict", "[predict] ", ["--run-id", "0" * 32, "some text"]),
}
WRITERS = ("train", "evaluate", "hydra-app")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained project (see ``make_project``); the rows work on copies of it."""
    return make_project(tmp_path_factory.mktemp("project"))


def make_project(root: Path) -> Path:
    """``root`` with params.yaml (tiny corpus), conf/, processed data and a trained model in
    models/ whose run is in ``root/mlflow.db``."""
    params = write_params(root)
    (root / "conf").symlink_to(REPO_ROOT / "conf")
    cfg = load_params(params)
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    finally:
        if previous is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return root


def hydra_overrides(root: Path) -> list[str]:
    """The Hydra app composes conf/ itself: the same tiny-corpus config as params.yaml."""
    import yaml

    values = yaml.safe_load((root / "params.yaml").read_text())
    data = values["data"]
    return [
        f"data.url={data['url']}",
        f"data.sha256={data['sha256']}",
        "data.mirrors=[]",
        *(f"paths.{name}={root / name}" for name in ("raw", "processed", "cache")),
    ]


def run_entry_point(entry: str, root: Path, uri: str) -> subprocess.CompletedProcess:
    module, _, arguments = ENTRY_POINTS[entry]
    argv = [a.format(params=root / "params.yaml", root=root) for a in arguments]
    if entry == "hydra-app":
        argv += hydra_overrides(root)
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=FAST,
        env=subprocess_env(MLFLOW_TRACKING_URI=uri),
    )


def assert_failed_in_one_line(result: subprocess.CompletedProcess, entry: str, *named: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]], result.stderr
    assert lines[-1].startswith(f"error: {ENTRY_POINTS[entry][1]}"), result.stderr
    for fragment in named:
        assert fragment in lines[-1], f"{fragment!r} not in {lines[-1]!r}"


def copy_project(project: Path, tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(project, root, symlinks=True)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_an_unreachable_tracking_server_stops_every_entry_point_at_once(
    project: Path, tmp_path: Path, entry: str
) -> None:
    root = copy_project(project, tmp_path)
    uri = f"http://127.0.0.1:{closed_port()}"
    result = run_entry_point(entry, root, uri)
    assert_failed_in_one_line(result, entry, f"MLflow tracking URI {uri} is unreachable")
    assert not list(root.glob("outputs/**/models")) and not (root / "reports" / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_corrupt_mlflow_db_stops_every_entry_point_in_one_line(project: Path, tmp_path: Path, entry: str) -> None:
    root = copy_project(project, tmp_path)
    database = root / "mlflow.db"
    database.write_bytes(os.urandom(8192))
    result = run_entry_point(entry, root, f"sqlite:///{database}")
    assert_failed_in_one_line(result, entry, f"sqlite:///{database}", "cannot be read as an SQLite database")
    assert not (root / "reports" / "metrics.json").exists()


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A tmpfs at tmp_path/ro; yields (directory, remount read-only). Skipped where mounting
    is not permitted (not root, no CAP_SYS_ADMIN)."""
    directory = tmp_path / "ro"
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(directory)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")

    def remount_read_only() -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)

    try:
        yield directory, remount_read_only
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_read_only_mlflow_db_stops_the_writers_and_still_serves_the_readers(
    project: Path, tmp_path: Path, read_only_dir, entry: str
) -> None:
    directory, remount_read_only = read_only_dir
    root = copy_project(project, tmp_path)
    database = directory / "mlflow.db"
    shutil.copyfile(root / "mlflow.db", database)  # the store with the trained run, then frozen
    for suffix in ("-wal", "-shm"):
        if (root / f"mlflow.db{suffix}").exists():
            shutil.copyfile(root / f"mlflow.db{suffix}", directory / f"mlflow.db{suffix}")
    remount_read_only()
    uri = f"sqlite:///{database}"
    result = run_entry_point(entry, root, uri)
    if entry in WRITERS:
        assert_failed_in_one_line(result, entry, uri, "is read-only")
    elif entry == "compare":
        assert result.returncode == 0, result.stderr
        assert "1 runs of 'textclf'" in result.stdout
    else:  # predict: the store is read, and the made-up run id is named as missing
        assert_failed_in_one_line(result, entry, "0" * 32)


@pytest.mark.slow
def test_evaluate_refuses_a_store_deleted_after_train_instead_of_making_a_new_one(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    database = root / "mlflow.db"
    for path in root.glob("mlflow.db*"):
        path.unlink()
    result = run_entry_point("evaluate", root, f"sqlite:///{database}")
    assert_failed_in_one_line(result, "evaluate", f"the MLflow store {database} that train logged", "no longer exists")
    assert not database.exists()  # no empty store made in its place
    assert not (root / "reports" / "metrics.json").exists()


def test_a_store_failure_inside_mlflow_becomes_one_line_naming_the_store(tmp_path: Path) -> None:
    """The translation behind the up-front checks: a store that turns corrupt between the
    check and the call (here: the check is skipped) is still one line, from SQLAlchemy's error."""
    database = tmp_path / "mlflow.db"
    database.write_bytes(os.urandom(4096))
    uri = f"sqlite:///{database}"
    with pytest.raises(TextclfError) as error:
        ensure_experiment(uri, "textclf")
    assert str(error.value).startswith(f"MLflow tracking URI {uri}: not an SQLite database")
    with pytest.raises(ZeroDivisionError):  # anything else keeps its own error
        with store_errors(uri):
            _ = 1 / 0


def test_readers_need_a_readable_store_only(tmp_path: Path) -> None:
    database = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{database}").search_experiments()  # a real, empty store
    check_tracking_uri(f"sqlite:///{database}", write=False)
    database.write_bytes(b"SQLite format 2\x00" + os.urandom(4080))
    for write in (True, False):
        with pytest.raises(TextclfError, match="cannot be read as an SQLite database"):
            check_tracking_uri(f"sqlite:///{database}", write=write)
