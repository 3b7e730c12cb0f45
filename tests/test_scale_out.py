"""Scaling out: DDP over processes and nodes, DDP inside Hydra sweeps, parallel sweeps and
queued DVC experiments sharing one SQLite store, an MLflow server on PostgreSQL, a DVC remote.

Everything runs on CPU with the tiny archive; each end-to-end test starts real processes
(torchrun, `python -m textclf`, dvc, the server script) and stops them in `finally`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from test_dvc_pipeline import STAGES, copy_repository, run, stages_run

from textclf.config import Config, load_params, validate
from textclf.distributed import launch_state_restorer
from textclf.params import compose, write_params
from textclf.stages.download import download
from textclf.stages.preprocess import preprocess
from textclf.tracking import retry_if_locked

from conftest import REPO_ROOT, TINY_MODELS, shrink_overrides, subprocess_env

TEST_SPLIT_SIZE = 18  # tiny archive: 3 groups x 6 test messages
PROCESS_TIMEOUT = 300  # seconds for any one command; a hang fails the test instead of the suite


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def finished_runs(uri: str, expected: int) -> list:
    """The runs of experiment textclf, after checking there are ``expected`` of them, all FINISHED."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("textclf")
    assert experiment is not None, f"no experiment in {uri}"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == expected, [(r.info.run_id, r.info.status) for r in runs]
    assert [r.info.status for r in runs] == ["FINISHED"] * expected
    return runs


def stage_params(tmp_path: Path, tiny_archive: tuple[Path, str], *extra: str) -> Path:
    """params.yaml for the stage entry points (all paths in tmp_path), with processed data."""
    archive, sha256 = tiny_archive
    paths = [f"paths.{name}={tmp_path / name}" for name in ("raw", "processed", "models", "reports", "cache")]
    params = tmp_path / "params.yaml"
    write_params(params, [*shrink_overrides(archive, sha256), *paths, *extra], root=REPO_ROOT)
    cfg = load_params(params)
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
    return params


def assert_one_trained_model(cfg: Config) -> None:
    assert sorted(p.name for p in cfg.paths.models.glob("*.ckpt")) == ["model.ckpt"]
    assert not cfg.paths.models.with_name("models.partial").exists()
    rows = list(csv.DictReader((cfg.paths.reports / "training_curves.csv").read_text().splitlines()))
    assert [row["epoch"] for row in rows] == ["0", "1"]


# --- fast: the pieces -----------------------------------------------------------------------


def test_gpu_trainers_use_bf16_mixed_precision() -> None:
    for option in ("gpu", "ddp"):
        trainer = validate(compose([f"trainer={option}"], root=REPO_ROOT)).trainer
        assert (trainer.accelerator, trainer.precision) == ("gpu", "bf16-mixed")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_runs_in_bf16(tiny_config, mlflow_uri: str) -> None:
    from textclf.stages.train import train

    cfg = tiny_config("trainer=gpu")
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
    summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    (record,) = finished_runs(mlflow_uri, 1)
    assert record.info.run_id == summary.run_id
    assert record.data.params["trainer.precision"] == "bf16-mixed"
    assert record.data.tags["device"].startswith("cuda")


def test_launch_state_restorer_undoes_what_a_ddp_launch_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    for name in ("LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")  # there before: must survive
    restore = launch_state_restorer()
    # What Lightning's launcher leaves in rank 0: variables, and a live process group.
    os.environ.update(LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        restore()
        assert not dist.is_initialized()
        assert not {"LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"} & set(os.environ)
        assert os.environ["MASTER_ADDR"] == "10.0.0.1"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_retry_if_locked_retries_only_a_locked_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    errors = [sqlite3.OperationalError("database is locked")] * 2 + [sqlite3.OperationalError("no such table")]
    calls = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "done"

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_if_locked(call)  # two locked attempts retried, the third error raised at once
    assert len(calls) == 3
    assert retry_if_locked(call) == "done"


# --- 1, 2: multi-process and multi-node training through the stage entry point ------------


@pytest.mark.slow
def test_train_stage_on_two_cpu_processes(tmp_path: Path, tiny_archive) -> None:
    params = stage_params(tmp_path, tiny_archive, "trainer.accelerator=cpu", "trainer.devices=2")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "textclf.stages.train", "--params", str(params)],
        cwd=tmp_path,
        env=subprocess_env(MLFLOW_TRACKING_URI=uri),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output  # a second process really trained
    (record,) = finished_runs(uri, 1)
    assert record.data.params["trainer.devices"] == "2"
    assert {"train/loss_epoch", "val/f1_macro"} <= set(record.data.metrics)  # the epoch loss is synced across ranks
    assert_one_trained_model(load_params(params))


@pytest.mark.slow
def test_train_stage_on_two_nodes_with_torchrun(tmp_path: Path, tiny_archive) -> None:
    params = stage_params(
        tmp_path,
        tiny_archive,
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        "trainer.strategy=ddp",
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "--max-restarts=0",
        "-m",
        "textclf.stages.train",
        "--params",
        str(params),
    ]
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    nodes = []
    try:
        for log in logs:  # two "nodes" on one machine, meeting over loopback
            with log.open("w") as handle:
                nodes.append(
                    subprocess.Popen(
                        torchrun,
                        cwd=tmp_path,
                        env=subprocess_env(MLFLOW_TRACKING_URI=uri),
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + PROCESS_TIMEOUT
        codes = [node.wait(timeout=max(1.0, deadline - time.monotonic())) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    output = "\n".join(log.read_text() for log in logs)
    assert codes == [0, 0], output[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert output.count('train: {"run_id"') == 1  # only global rank 0 reports
    (record,) = finished_runs(uri, 1)
    assert record.data.params["trainer.num_nodes"] == "2"
    assert_one_trained_model(load_params(params))


# --- 3, 4: Hydra sweeps: DDP inside jobs, parallel jobs on one SQLite store ------------------


def sweep(cwd: Path, uri: str, *overrides: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "textclf", "-m", *overrides],
        cwd=cwd,
        env=subprocess_env(MLFLOW_TRACKING_URI=uri),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "conf").symlink_to(REPO_ROOT / "conf")
    return cwd


def shared_overrides(tiny_archive: tuple[Path, str]) -> list[str]:
    return [o for o in shrink_overrides(*tiny_archive) if not o.startswith("model")]


@pytest.mark.slow
def test_multirun_jobs_each_train_on_two_cpu_processes(sweep_dir: Path, tiny_archive, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep(
        sweep_dir,
        uri,
        *shared_overrides(tiny_archive),
        "model=fasttext,lstm",
        "model.embed_dim=8",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
    )
    runs = finished_runs(uri, 2)
    assert sorted(r.data.tags["model"] for r in runs) == ["FastText", "LSTMClassifier"]
    # Evaluated after the process group was torn down: the whole test split, not rank 0's half.
    assert [r.data.metrics["test/num_test"] for r in runs] == [TEST_SPLIT_SIZE] * 2
    (sweep_root,) = (sweep_dir / "multirun").glob("*/*")  # one sweep; children made no sweep
    jobs = sorted(p.name for p in sweep_root.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    assert {r.data.tags["hydra.output_dir"] for r in runs} == {str(sweep_root / job) for job in jobs}
    for job in jobs:
        assert (sweep_root / job / "models" / "model.ckpt").is_file()
        # Rank 1 was a single run of this job, in this job's directory (its Hydra log is there).
        assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (sweep_root / job / "train_ddp_process_1.log").read_text()
    assert not (sweep_dir / "outputs").exists()  # no single-run directories from the children


@pytest.mark.slow
def test_joblib_sweep_runs_jobs_in_parallel_on_one_sqlite_store(sweep_dir: Path, tiny_archive, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # fresh: the parallel jobs also create it
    output = sweep(
        sweep_dir,
        uri,
        *shared_overrides(tiny_archive),
        *TINY_MODELS["fasttext"],
        "model=fasttext",
        "seed=0,1,2,3",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    )
    assert "Joblib.Parallel(n_jobs=2" in output
    runs = finished_runs(uri, 4)
    assert sorted(r.data.tags["hydra.job.num"] for r in runs) == ["0", "1", "2", "3"]
    assert all("test/accuracy" in r.data.metrics for r in runs)
    # Each job's span: from Hydra writing its config to evaluate writing its metrics.
    spans = sorted(
        (Path(job, ".hydra", "hydra.yaml").stat().st_mtime, Path(job, "reports", "metrics.json").stat().st_mtime)
        for job in {r.data.tags["hydra.output_dir"] for r in runs}
    )
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans  # jobs overlapped


# --- 4: queued DVC experiments with two workers ----------------------------------------------


def dvc_env(**extra: str) -> dict[str, str]:
    """No MLFLOW_TRACKING_URI: runs must find the parent repository's store through $DVC_ROOT."""
    env = subprocess_env(**extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def wait_for_queue(repo: Path, env: dict[str, str], timeout: float = PROCESS_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = run(["dvc", "queue", "status"], repo, env)
        if not any(state in status for state in ("Queued", "Running")):
            return status
        assert time.monotonic() < deadline, f"queue still busy after {timeout}s:\n{status}"
        time.sleep(3)


@pytest.mark.slow
def test_dvc_queue_with_two_workers_logs_to_the_parent_store(tmp_path: Path, tiny_archive) -> None:
    repo = copy_repository(tmp_path / "repo")
    env = dvc_env()
    for name, lr in (("q-lr-05", "0.05"), ("q-lr-02", "0.02")):
        args = ["dvc", "exp", "run", "--queue", "--name", name]
        for override in [*shrink_overrides(*tiny_archive), f"optimizer.lr={lr}"]:
            args += ["-S", override]
        run(args, repo, env)
    try:
        started = subprocess.run(
            ["dvc", "queue", "start", "-j", "2"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        status = wait_for_queue(repo, env)
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env, capture_output=True, timeout=60)
    assert status.count("Success") == 2, status
    runs = finished_runs(f"sqlite:///{repo / 'mlflow.db'}", 2)  # the parent repo's default store
    assert sorted(r.data.params["optimizer.lr"] for r in runs) == ["0.02", "0.05"]
    assert all("test/accuracy" in r.data.metrics for r in runs)
    shown = run(["dvc", "exp", "show", "--json"], repo, env)
    assert "q-lr-05" in shown and "q-lr-02" in shown


# --- 5: MLflow tracking server on PostgreSQL --------------------------------------------------

SERVER_SCRIPT = REPO_ROOT / "scripts" / "mlflow_server.sh"


def postgres_installable() -> bool:
    """PostgreSQL's server binaries are here, or the script can install them (root + apt-get)."""
    if any(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) or shutil.which("pg_ctl") is not None:
        return True
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


@pytest.mark.slow
@pytest.mark.skipif(
    not postgres_installable(), reason="PostgreSQL is not installed and cannot be (not root, no apt-get)"
)
def test_mlflow_server_on_postgres_records_train_and_evaluate(tiny_config, monkeypatch: pytest.MonkeyPatch) -> None:
    from textclf.stages.evaluate import evaluate
    from textclf.stages.train import train

    # Not under pytest's tmp_path: its parents are private (0700), and PostgreSQL runs as
    # another user when the tests run as root.
    state = Path(tempfile.mkdtemp(prefix="textclf-mlflow-server-"))
    state.chmod(0o755)
    env = subprocess_env(MLFLOW_SERVER_DIR=str(state), START_TIMEOUT="180")
    try:
        started = subprocess.run(
            ["bash", str(SERVER_SCRIPT), "start"],
            env=env,
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        uri = started.stdout.strip().splitlines()[-1]
        assert uri.startswith("http://127.0.0.1:")

        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        cfg = tiny_config("optimizer.lr=0.02")
        download(cfg, cfg.paths.raw, progress=False)
        preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
        summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
        metrics = evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)

        client = MlflowClient(uri)
        record = client.get_run(summary.run_id)
        assert record.info.status == "FINISHED"
        assert record.data.params["optimizer.lr"] == "0.02"
        assert record.data.metrics["test/accuracy"] == pytest.approx(metrics["accuracy"])
        assert "val/f1_macro" in record.data.metrics
        assert "config.yaml" in {a.path for a in client.list_artifacts(record.info.run_id)}
        local = client.download_artifacts(record.info.run_id, "evaluation/metrics.json", str(cfg.paths.reports.parent))
        assert json.loads(Path(local).read_text()) == metrics
        # Served through the server: the files sit in the server's artifact directory.
        assert list((state / "artifacts").rglob("model.safetensors"))  # the logged model's weights
    finally:
        stopped = subprocess.run(
            ["bash", str(SERVER_SCRIPT), "stop"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        shutil.rmtree(state, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


# --- 6: DVC remote ---------------------------------------------------------------------------


@pytest.mark.slow
def test_dvc_remote_push_then_pull_into_a_fresh_clone_runs_nothing(tmp_path: Path, tiny_archive) -> None:
    repo = copy_repository(tmp_path / "repo")
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_params(repo / "params.yaml", shrink_overrides(*tiny_archive), root=repo)
    assert stages_run(run(["dvc", "repro"], repo, env)) == list(STAGES)
    run(["dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], repo, env)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    run(["git", "add", "-A"], repo, env)
    run([*git, "commit", "-qm", "pipeline outputs and a remote"], repo, env)
    run(["dvc", "push"], repo, env)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "models").exists()
    run(["dvc", "pull"], clone, env)
    assert (clone / "models" / "model.ckpt").is_file()
    assert (clone / "reports" / "metrics.json").read_text() == (repo / "reports" / "metrics.json").read_text()
    output = run(["dvc", "repro"], clone, env)
    assert stages_run(output) == [], output
    assert "up to date" in output
