"""Fetching the archive: plain path, file:// and http:// (a local server), failover, checksums.

Nothing here leaves 127.0.0.1; the http server serves the tiny archive's directory.
"""

from __future__ import annotations

import functools
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from textclf.data.download import download
from textclf.errors import TextclfError
from textclf.hashing import file_sha256
from textclf.stages.download import download as download_stage

WRONG_SHA = "0" * 64


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def http_server(tiny_archive: tuple[Path, str]):
    """Serves the tiny archive's directory on 127.0.0.1:<free port>; yields the base URL."""
    archive, _ = tiny_archive
    handler = functools.partial(QuietHandler, directory=str(archive.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_only(directory: Path, names: set[str]) -> None:
    present = {p.name for p in directory.iterdir()} if directory.exists() else set()
    assert present == names, f"unexpected contents of {directory}: {sorted(present)}"


# --- sources that work -------------------------------------------------------------------


def test_plain_local_path(tiny_config, tiny_archive, tmp_path: Path) -> None:
    archive, sha = tiny_archive
    cfg = tiny_config()
    raw = tmp_path / "raw"
    path = download_stage(cfg.data, raw, progress=False)
    assert path == raw / cfg.data.archive_name
    assert path.read_bytes() == archive.read_bytes()
    assert file_sha256(path) == sha
    assert_only(raw, {cfg.data.archive_name})


def test_file_url(tiny_config, tiny_archive, tmp_path: Path) -> None:
    archive, sha = tiny_archive
    data = tiny_config().data.model_copy(update={"url": archive.as_uri()})
    assert data.url.startswith("file://")
    path = download_stage(data, tmp_path / "raw", progress=False)
    assert path.read_bytes() == archive.read_bytes()
    assert_only(tmp_path / "raw", {data.archive_name})


def test_http_url(tiny_config, tiny_archive, http_server: str, tmp_path: Path) -> None:
    archive, sha = tiny_archive
    data = tiny_config().data.model_copy(update={"url": f"{http_server}/{archive.name}"})
    path = download_stage(data, tmp_path / "raw", progress=False)
    assert file_sha256(path) == sha
    assert path.read_bytes() == archive.read_bytes()
    assert_only(tmp_path / "raw", {data.archive_name})


def test_uppercase_checksum_is_accepted(tiny_archive, tmp_path: Path) -> None:
    archive, sha = tiny_archive
    target = download([str(archive)], tmp_path / "out" / "a.tar.gz", sha.upper(), progress=False)
    assert file_sha256(target) == sha


def test_an_existing_target_is_replaced(tiny_archive, tmp_path: Path) -> None:
    archive, sha = tiny_archive
    target = tmp_path / "a.tar.gz"
    target.write_bytes(b"stale bytes")
    download([str(archive)], target, sha, progress=False)
    assert target.read_bytes() == archive.read_bytes()


# --- failover ----------------------------------------------------------------------------


def test_closed_port_falls_back_to_the_mirror(
    tiny_config, tiny_archive, closed_port: int, backoff_waits: list[float], tmp_path: Path
) -> None:
    archive, sha = tiny_archive
    data = tiny_config().data.model_copy(update={"url": f"http://127.0.0.1:{closed_port}/x", "mirrors": [str(archive)]})
    path = download_stage(data, tmp_path / "raw", progress=False, retries=2, backoff=0.5)
    assert file_sha256(path) == sha
    assert backoff_waits == [0.5, 1.0]  # a refused connection is transient: retried with backoff
    assert_only(tmp_path / "raw", {data.archive_name})


@pytest.mark.parametrize("scheme", ["path", "file"])
def test_missing_file_falls_back_to_the_http_mirror_without_retrying(
    tiny_config, tiny_archive, http_server: str, backoff_waits: list[float], tmp_path: Path, scheme: str
) -> None:
    archive, sha = tiny_archive
    missing = tmp_path / "nowhere" / "missing.tar.gz"
    first = str(missing) if scheme == "path" else missing.as_uri()
    data = tiny_config().data.model_copy(update={"url": first, "mirrors": [f"{http_server}/{archive.name}"]})
    path = download_stage(data, tmp_path / "raw", progress=False)
    assert file_sha256(path) == sha
    assert backoff_waits == []  # a missing file will not appear on retry
    assert_only(tmp_path / "raw", {data.archive_name})


def test_http_404_falls_back_to_the_mirror(
    tiny_archive, http_server: str, backoff_waits: list[float], tmp_path: Path
) -> None:
    archive, sha = tiny_archive
    target = tmp_path / "a.tar.gz"
    download([f"{http_server}/no-such-file", str(archive)], target, sha, progress=False)
    assert target.read_bytes() == archive.read_bytes()
    assert backoff_waits == []


# --- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["path", "file", "http"])
def test_checksum_mismatch_names_both_hashes_and_leaves_nothing(
    tiny_config, tiny_archive, http_server: str, backoff_waits: list[float], tmp_path: Path, source: str
) -> None:
    archive, sha = tiny_archive
    url = {"path": str(archive), "file": archive.as_uri(), "http": f"{http_server}/{archive.name}"}[source]
    data = tiny_config().data.model_copy(update={"url": url, "sha256": WRONG_SHA})
    raw = tmp_path / "raw"
    with pytest.raises(TextclfError) as caught:
        download_stage(data, raw, progress=False)
    message = str(caught.value)
    assert WRONG_SHA in message
    assert sha in message
    assert backoff_waits == []  # other bytes will not change on retry
    assert_only(raw, set())  # no archive, no *.partial-* temp file


def test_checksum_mismatch_on_every_url_is_reported_per_url(
    tiny_archive, tmp_path: Path, backoff_waits: list[float]
) -> None:
    archive, sha = tiny_archive
    copy = tmp_path / "src" / "copy.tar.gz"
    copy.parent.mkdir()
    copy.write_bytes(archive.read_bytes())
    out = tmp_path / "out"
    with pytest.raises(TextclfError) as caught:
        download([str(archive), copy.as_uri()], out / "a.tar.gz", WRONG_SHA, progress=False)
    message = str(caught.value)
    assert str(archive) in message and copy.as_uri() in message
    assert message.count(sha) == 2
    assert_only(out, set())


def test_unreachable_url_without_mirror_names_the_url(
    tiny_config, closed_port: int, backoff_waits: list[float], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{closed_port}/20news.tar.gz"
    data = tiny_config().data.model_copy(update={"url": url, "mirrors": []})
    raw = tmp_path / "raw"
    with pytest.raises(TextclfError) as caught:
        download_stage(data, raw, progress=False, retries=1, backoff=0.1)
    assert url in str(caught.value)
    assert "after 2 attempts" in str(caught.value)
    assert backoff_waits == [0.1]
    assert_only(raw, set())


def test_missing_local_path_without_mirror_names_the_path(tmp_path: Path, backoff_waits: list[float]) -> None:
    missing = tmp_path / "missing.tar.gz"
    with pytest.raises(TextclfError, match="missing.tar.gz"):
        download([str(missing)], tmp_path / "out" / "a.tar.gz", WRONG_SHA, progress=False)


@pytest.mark.parametrize("url", ["ftp://example.org/20news.tar.gz", "s3://bucket/20news.tar.gz"])
def test_unsupported_scheme(tiny_config, tmp_path: Path, url: str, backoff_waits: list[float]) -> None:
    scheme = url.split(":", 1)[0]
    data = tiny_config().data.model_copy(update={"url": url})
    with pytest.raises(TextclfError, match=rf"unsupported URL scheme '{scheme}'") as caught:
        download_stage(data, tmp_path / "raw", progress=False)
    assert url in str(caught.value)
    assert_only(tmp_path / "raw", set())


def test_no_url_at_all(tmp_path: Path) -> None:
    with pytest.raises(TextclfError, match="no download URL"):
        download([], tmp_path / "a.tar.gz", WRONG_SHA, progress=False)
