"""Credentials never become params: a URL param with userinfo is refused before any work, and
what a run writes (MLflow store and artifacts, Hydra output dirs, params.yaml, dvc.lock, git
objects of `dvc exp run`) holds no secret passed in the environment."""

from __future__ import annotations

import base64
import functools
import secrets
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from textclf.config import credential_problems, validate
from textclf.errors import TextclfError
from textclf.params import compose

from conftest import REPO_ROOT, shrink_overrides, subprocess_env

REFUSED = {
    "password": ("data.url", "https://alice:hunter2@example.org/20news.tar.gz", "~/.netrc"),
    "token-as-user": ("data.url", "https://hunter2@example.org/20news.tar.gz", "TEXTCLF_DOWNLOAD_AUTH"),
    "mirror": ("data.mirrors", "[https://example.org/a.tar.gz,https://bob:hunter2@example.org/b]", "~/.netrc"),
    "tracking": ("tracking.uri", "https://alice:hunter2@mlflow.example.org", "MLFLOW_TRACKING_PASSWORD"),
    "database": ("tracking.uri", "postgresql://mlflow:hunter2@db.example.org/mlflow", "~/.pgpass"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_credentials_in_a_url_param_are_refused_in_one_line(case: str) -> None:
    key, value, hint = REFUSED[case]
    with pytest.raises(TextclfError) as error:
        validate(compose([f"{key}={value}"], root=REPO_ROOT))
    message = str(error.value)
    assert "\n" not in message and "hunter2" not in message
    assert f"{key}: " in message and "***@" in message and "has credentials in the URL" in message
    assert hint in message


def test_a_database_user_without_a_password_is_not_a_secret() -> None:
    assert credential_problems({"tracking": {"uri": "postgresql://mlflow@db.example.org/mlflow"}}) == []
    assert credential_problems({"data": {"url": "https://example.org/a@b.tar.gz"}}) == []  # "@" in the path


def test_a_search_storage_with_a_password_is_refused() -> None:
    from omegaconf import OmegaConf

    from textclf.tune import SEARCH_KEY, compose_tune, load_search

    composed = compose_tune([f"{SEARCH_KEY}.storage=postgresql://optuna:hunter2@db.example.org/optuna"], REPO_ROOT)
    with pytest.raises(TextclfError) as error:
        load_search(OmegaConf.to_container(composed[SEARCH_KEY], resolve=True))
    assert f"{SEARCH_KEY}.storage: postgresql://***@db.example.org" in str(error.value)
    assert "hunter2" not in str(error.value) and "~/.pgpass" in str(error.value)


def written(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.parametrize("command", ["textclf", "textclf.params", "textclf.stages.download"])
def test_credentials_in_a_url_are_refused_before_anything_is_written(tmp_path: Path, command: str) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "conf").symlink_to(REPO_ROOT / "conf")
    override = "data.url=https://alice:hunter2@example.org/20news.tar.gz"
    if command == "textclf.stages.download":  # a params.yaml edited by hand
        params = (REPO_ROOT / "params.yaml").read_text()
        (cwd / "params.yaml").write_text(params.replace("url: http://", "url: http://alice:hunter2@", 1))
        args = [sys.executable, "-m", command]
    else:
        args = [sys.executable, "-m", command, *(["params.yaml"] if command == "textclf.params" else []), override]
    before = written(cwd)
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{cwd / 'mlflow.db'}")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "data.url: http" in line and "has credentials in the URL" in line
    assert "hunter2" not in result.stdout + result.stderr
    assert written(cwd) == before


class BasicAuthHandler(SimpleHTTPRequestHandler):
    """Serves its directory to requests that bring ``expected`` as their Authorization."""

    expected = ""
    requests: list[str | None] = []

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.requests.append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") != self.expected:
            self.send_error(401)
            return
        super().do_GET()


@pytest.mark.slow
def test_a_hydra_run_and_a_dvc_experiment_write_no_planted_secret_anywhere(tiny_archive, tmp_path: Path) -> None:
    from test_dvc_pipeline import copy_repository

    archive, sha256 = tiny_archive
    password, token = f"pw-{secrets.token_hex(8)}", f"hf_{secrets.token_hex(12)}"
    header = "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()
    handler = type("Handler", (BasicAuthHandler,), {"expected": header, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(archive.parent)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    repo = copy_repository(tmp_path / "repo")
    home = tmp_path / "home"
    home.mkdir()
    env = subprocess_env(
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
        HOME=str(home),
        TEXTCLF_DOWNLOAD_AUTH=f"alice:{password}",
        HF_TOKEN=token,
    )
    (tmp_path / "store").mkdir()
    url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
    overrides = [o for o in shrink_overrides(archive, sha256) if not o.startswith("data.url")] + [f"data.url={url}"]
    try:
        for args in (
            [sys.executable, "-m", "textclf", *overrides, "trainer.max_epochs=1"],
            # Its own cache, so it downloads too (rather than take the copy the first run kept).
            ["dvc", "exp", "run", "--name", "secretless", *[a for o in overrides for a in ("-S", o)]]
            + ["-S", f"paths.cache={tmp_path / 'dvc-cache'}"],
        ):
            result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            assert password not in result.stdout + result.stderr and token not in result.stdout + result.stderr
    finally:
        server.shutdown()
        server.server_close()
    assert handler.requests == [header, header]  # both downloads used the environment's credentials

    assert list(repo.glob("outputs/*/*/.hydra/overrides.yaml")) and (repo / "dvc.lock").is_file()
    assert (tmp_path / "store" / "mlartifacts").is_dir()
    refs = subprocess.run(["git", "for-each-ref", "refs/exps"], cwd=repo, capture_output=True, text=True).stdout
    assert refs.strip(), "dvc exp run committed no experiment"
    objects = subprocess.run(
        "git rev-list --objects --all | cut -d' ' -f1 | git cat-file --batch",
        shell=True,
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout
    planted = [password.encode(), token.encode(), header.split()[1].encode()]
    assert not [secret for secret in planted if secret in objects]
    files = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and not path.is_symlink()}
    assert [str(path) for path, data in files.items() if any(secret in data for secret in planted)] == []
    # The control: a param (data.url) does reach each of these, so a secret there would be found.
    assert url.encode() in objects
    reached = {path.name for path, data in files.items() if url.encode() in data}
    assert {"dvc.lock", "params.yaml", "overrides.yaml", "config.yaml"} <= reached
    assert any(path.is_relative_to(tmp_path / "store") for path, data in files.items() if url.encode() in data)
