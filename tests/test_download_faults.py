"""Download faults against a local HTTP server: retries with backoff, failover, timeouts.

The server (127.0.0.1, a free port, one thread per request) misbehaves per path:
  /ok            the payload
  /drop          Content-Length of the whole payload, then closes after half of it
  /drop-once     like /drop on the first request, then the payload
  /wrong         other bytes of the same length
  /missing       404
  /flaky/<n>     500 for the first n requests, then the payload
  /stall         says nothing for longer than the client's timeout
  /stall-body    sends the headers and half the body, then says nothing
"""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import textclf.data.download as download_module
from textclf.data.download import download
from textclf.errors import TextclfError
from textclf.stages.download import download as download_stage

PAYLOAD = bytes(range(256)) * 64  # 16 KiB
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
STALL_LIMIT_SECONDS = 10.0  # a stalled handler gives up after this, whatever happens
TIMEOUT = 0.3  # the client's per-request timeout in these tests


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FaultHandler)
        self.hits: Counter[str] = Counter()
        self.authorization: list[str | None] = []  # the Authorization header of each request
        self.lock = threading.Lock()
        self.release = threading.Event()  # set at teardown: stalled handlers return at once

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class FaultHandler(BaseHTTPRequestHandler):
    server: FaultServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
        pass

    def _headers(self, status: int = 200, length: int = len(PAYLOAD)) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _drop_after_half(self) -> None:
        self._headers()
        self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        with self.server.lock:
            self.server.hits[self.path] += 1
            hit = self.server.hits[self.path]
            self.server.authorization.append(self.headers.get("Authorization"))
        if self.path == "/ok" or (self.path == "/drop-once" and hit > 1):
            self._headers()
            self.wfile.write(PAYLOAD)
        elif self.path in ("/drop", "/drop-once"):
            self._drop_after_half()
        elif self.path == "/wrong":
            self._headers()
            self.wfile.write(bytes(len(PAYLOAD)))
        elif self.path.startswith("/flaky/") and hit <= int(self.path.rsplit("/", 1)[1]):
            self._headers(500, 0)
        elif self.path.startswith("/flaky/"):
            self._headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/stall":
            self.server.release.wait(STALL_LIMIT_SECONDS)
        elif self.path == "/stall-body":
            self._headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.server.release.wait(STALL_LIMIT_SECONDS)
        else:
            self._headers(404, 0)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> FaultServer:
    httpd = FaultServer()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop() -> None:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

    request.addfinalizer(stop)
    return httpd


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Records each backoff instead of waiting it out."""
    recorded: list[float] = []
    monkeypatch.setattr(download_module, "_sleep", recorded.append)
    return recorded


def fetch(urls: list[str], target: Path, retries: int = 3, timeout: float = TIMEOUT) -> Path:
    return download(urls, target, SHA256, progress=False, retries=retries, backoff=0.01, timeout=timeout)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_5xx_is_retried_with_exponential_backoff(server, sleeps, tmp_path: Path) -> None:
    target = fetch([server.url("/flaky/3")], tmp_path / "a.tar.gz", retries=3)
    assert target.read_bytes() == PAYLOAD
    assert server.hits["/flaky/3"] == 4
    assert sleeps == pytest.approx([0.01, 0.02, 0.04])
    assert leftovers(tmp_path) == ["a.tar.gz"]


def test_5xx_past_the_retries_fails_over_to_the_mirror(server, sleeps, tmp_path: Path) -> None:
    target = fetch([server.url("/flaky/99"), server.url("/ok")], tmp_path / "a.tar.gz", retries=2)
    assert target.read_bytes() == PAYLOAD
    assert server.hits["/flaky/99"] == 3 and server.hits["/ok"] == 1


def test_404_is_not_retried(server, sleeps, tmp_path: Path) -> None:
    target = fetch([server.url("/missing"), server.url("/ok")], tmp_path / "a.tar.gz")
    assert target.read_bytes() == PAYLOAD
    assert server.hits["/missing"] == 1
    assert sleeps == []


def test_a_connection_dropped_midway_restarts_cleanly(server, sleeps, tmp_path: Path) -> None:
    target = fetch([server.url("/drop-once")], tmp_path / "a.tar.gz")
    assert target.read_bytes() == PAYLOAD  # not the first half twice, not half
    assert server.hits["/drop-once"] == 2
    assert leftovers(tmp_path) == ["a.tar.gz"]


def test_a_connection_dropped_every_time_fails_in_one_line_and_leaves_nothing(
    server, sleeps, tmp_path: Path
) -> None:
    url = server.url("/drop")
    with pytest.raises(TextclfError) as error:
        fetch([url], tmp_path / "raw" / "a.tar.gz", retries=2)
    message = str(error.value)
    assert "\n" not in message
    assert url in message and f"after {len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes" in message
    assert "after 3 attempts" in message
    assert server.hits["/drop"] == 3
    assert leftovers(tmp_path / "raw") == []


def test_wrong_bytes_fail_over_at_once_and_are_never_kept(server, sleeps, tmp_path: Path) -> None:
    target = fetch([server.url("/wrong"), server.url("/ok")], tmp_path / "a.tar.gz")
    assert target.read_bytes() == PAYLOAD
    assert server.hits["/wrong"] == 1 and sleeps == []

    with pytest.raises(TextclfError, match="checksum mismatch for .*/wrong") as error:
        fetch([server.url("/wrong")], tmp_path / "b.tar.gz")
    assert "\n" not in str(error.value)
    assert leftovers(tmp_path) == ["a.tar.gz"]


@pytest.mark.parametrize("path", ["/stall", "/stall-body"])
def test_a_stalled_server_times_out_and_is_retried(server, sleeps, tmp_path: Path, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(TextclfError) as error:
        fetch([server.url(path)], tmp_path / "a.tar.gz", retries=1, timeout=TIMEOUT)
    elapsed = time.monotonic() - started
    assert elapsed < 2 * TIMEOUT + 2.0  # two attempts of one timeout each, not the stall
    assert server.hits[path] == 2
    message = str(error.value)
    assert "timed out" in message and server.url(path) in message and "\n" not in message
    assert leftovers(tmp_path) == []

    target = fetch([server.url(path), server.url("/ok")], tmp_path / "a.tar.gz", retries=0)
    assert target.read_bytes() == PAYLOAD


def test_a_refused_connection_is_retried_then_named(sleeps, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/a.tar.gz"
    with pytest.raises(TextclfError) as error:
        fetch([url], tmp_path / "a.tar.gz", retries=2)
    assert len(sleeps) == 2
    assert url in str(error.value) and "refused" in str(error.value).lower()


def test_every_failure_is_listed_in_one_line(server, sleeps, tmp_path: Path) -> None:
    urls = [server.url("/missing"), server.url("/flaky/99"), str(tmp_path / "nowhere.tar.gz")]
    with pytest.raises(TextclfError) as error:
        fetch(urls, tmp_path / "raw" / "a.tar.gz", retries=1)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("could not download the archive: ")
    assert f"{urls[0]}: HTTP 404" in message
    assert f"{urls[1]}: HTTP 500" in message and "after 2 attempts" in message
    assert "nowhere.tar.gz" in message
    assert server.hits["/missing"] == 1 and server.hits["/flaky/99"] == 2
    assert leftovers(tmp_path / "raw") == []


def test_url_credentials_are_sent_as_basic_auth_and_never_shown(server, sleeps, tmp_path: Path) -> None:
    port = server.server_address[1]
    with pytest.raises(TextclfError) as error:
        fetch([f"http://alice:hunter2@127.0.0.1:{port}/missing"], tmp_path / "a.tar.gz", retries=0)
    message = str(error.value)
    assert "hunter2" not in message and f"http://***@127.0.0.1:{port}/missing: HTTP 404" in message
    assert server.authorization == ["Basic " + base64.b64encode(b"alice:hunter2").decode()]


def test_the_stage_retries_then_uses_the_mirrors(server, sleeps, tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config()
    data = cfg.data.model_copy(
        update={"url": server.url("/flaky/1"), "mirrors": [server.url("/ok")], "sha256": SHA256}
    )
    path = download_stage(data, cfg.paths.raw, progress=False, retries=1, backoff=0.01, timeout=TIMEOUT)
    assert path == cfg.paths.raw / cfg.data.archive_name and path.read_bytes() == PAYLOAD
    assert server.hits["/flaky/1"] == 2 and server.hits["/ok"] == 0 and sleeps == [0.01]
