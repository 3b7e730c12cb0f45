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
  /auth          the payload to requests with the Authorization header in server.expected_auth,
                 else 401
  /endless       zeros without a Content-Length, until the client hangs up
  /huge          a Content-Length of 1 TB (and the payload)
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import random
import socket
import tarfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import textclf.data.download as download_module
from textclf.data.download import BACKOFF_SECONDS, RETRIES, download
from textclf.errors import TextclfError
from textclf.stages.download import download as download_stage


def archive_payload() -> bytes:
    """A small corpus archive in the 20news layout (about 16 KiB), so the download stage, which
    hashes what it fetched, can read it; its documents are random bytes, which gzip leaves as large."""
    rng = random.Random(0)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as packed, tarfile.open(fileobj=packed, mode="w") as tar:
        for name in (
            f"{split}/{group}/{i}"
            for split in ("20news-bydate-train", "20news-bydate-test")
            for group in "ab"
            for i in range(4)
        ):
            document = rng.randbytes(1024)
            info = tarfile.TarInfo(name)
            info.size = len(document)
            tar.addfile(info, io.BytesIO(document))
    return buffer.getvalue()


PAYLOAD = archive_payload()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
STALL_LIMIT_SECONDS = 10.0  # a stalled handler gives up after this, whatever happens
TIMEOUT = 0.3  # the client's per-request timeout in these tests
CHUNK = 64 * 1024
ENDLESS_CAP = 1 << 30  # /endless stops here whatever happens, so a broken limit fails, not hangs


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FaultHandler)
        self.hits: Counter[str] = Counter()
        self.authorization: list[str | None] = []  # the Authorization header of each request
        self.lock = threading.Lock()
        self.release = threading.Event()  # set at teardown: stalled handlers return at once
        self.expected_auth: str | None = None
        self.endless_sent = 0  # bytes /endless sent before the client hung up

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
        elif self.path == "/auth" and self.headers.get("Authorization") == self.server.expected_auth:
            self._headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/auth":
            self._headers(401, 0)
        elif self.path == "/endless":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the body ends when the connection does
            try:
                while not self.server.release.is_set() and self.server.endless_sent < ENDLESS_CAP:
                    self.wfile.write(bytes(CHUNK))
                    self.server.endless_sent += CHUNK
            except OSError:  # the client hung up
                pass
        elif self.path == "/huge":
            self._headers(length=10**12)
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


def fetch(urls: list[str], target: Path, retries: int = 3, timeout: float = TIMEOUT) -> Path:
    return download(urls, target, SHA256, progress=False, retries=retries, backoff=0.01, timeout=timeout)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_5xx_is_retried_with_exponential_backoff(server, backoff_waits, tmp_path: Path) -> None:
    target = fetch([server.url("/flaky/3")], tmp_path / "a.tar.gz", retries=3)
    assert target.read_bytes() == PAYLOAD
    assert server.hits["/flaky/3"] == 4
    assert backoff_waits == pytest.approx([0.01, 0.02, 0.04])
    assert leftovers(tmp_path) == ["a.tar.gz"]


def test_5xx_past_the_retries_fails_over_to_the_mirror(server, backoff_waits, tmp_path: Path) -> None:
    target = fetch([server.url("/flaky/99"), server.url("/ok")], tmp_path / "a.tar.gz", retries=2)
    assert target.read_bytes() == PAYLOAD
    assert server.hits["/flaky/99"] == 3 and server.hits["/ok"] == 1


def test_404_is_not_retried(server, backoff_waits, tmp_path: Path) -> None:
    target = fetch([server.url("/missing"), server.url("/ok")], tmp_path / "a.tar.gz")
    assert target.read_bytes() == PAYLOAD
    assert server.hits["/missing"] == 1
    assert backoff_waits == []


def test_a_connection_dropped_midway_restarts_cleanly(server, backoff_waits, tmp_path: Path) -> None:
    target = fetch([server.url("/drop-once")], tmp_path / "a.tar.gz")
    assert target.read_bytes() == PAYLOAD  # not the first half twice, not half
    assert server.hits["/drop-once"] == 2
    assert leftovers(tmp_path) == ["a.tar.gz"]


def test_a_connection_dropped_every_time_fails_in_one_line_and_leaves_nothing(
    server, backoff_waits, tmp_path: Path
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


def test_wrong_bytes_fail_over_at_once_and_are_never_kept(server, backoff_waits, tmp_path: Path) -> None:
    target = fetch([server.url("/wrong"), server.url("/ok")], tmp_path / "a.tar.gz")
    assert target.read_bytes() == PAYLOAD
    assert server.hits["/wrong"] == 1 and backoff_waits == []

    with pytest.raises(TextclfError, match="checksum mismatch for .*/wrong") as error:
        fetch([server.url("/wrong")], tmp_path / "b.tar.gz")
    assert "\n" not in str(error.value)
    assert leftovers(tmp_path) == ["a.tar.gz"]


@pytest.mark.parametrize("path", ["/stall", "/stall-body"])
def test_a_stalled_server_times_out_and_is_retried(server, backoff_waits, tmp_path: Path, path: str) -> None:
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


def test_a_refused_connection_is_retried_then_named(backoff_waits, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/a.tar.gz"
    with pytest.raises(TextclfError) as error:
        fetch([url], tmp_path / "a.tar.gz", retries=2)
    assert len(backoff_waits) == 2
    assert url in str(error.value) and "refused" in str(error.value).lower()


def test_every_failure_is_listed_in_one_line(server, backoff_waits, tmp_path: Path) -> None:
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


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME without ~/.netrc and no credentials in the environment; returns that HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("NETRC", download_module.AUTH_ENV, download_module.TOKEN_ENV):
        monkeypatch.delenv(name, raising=False)
    return home


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


def test_credentials_in_a_url_are_refused_and_never_shown(
    server, backoff_waits, no_credentials, tmp_path: Path
) -> None:
    port = server.server_address[1]
    for url in (f"http://alice:hunter2@127.0.0.1:{port}/auth", f"http://hunter2@127.0.0.1:{port}/auth"):
        with pytest.raises(TextclfError) as error:
            fetch([url], tmp_path / "a.tar.gz", retries=0)
        message = str(error.value)
        assert "hunter2" not in message and "\n" not in message
        assert f"http://***@127.0.0.1:{port}/auth: credentials in the URL are not accepted" in message
        assert "~/.netrc" in message and download_module.AUTH_ENV in message
    assert server.hits["/auth"] == 0 and leftovers(tmp_path) == ["home"]


def test_netrc_credentials_are_sent_as_basic_auth_to_their_host(
    server, backoff_waits, no_credentials: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server.expected_auth = basic(b"alice:hunter2")
    with pytest.raises(TextclfError, match="HTTP 401"):  # no netrc: no credentials
        fetch([server.url("/auth")], tmp_path / "a.tar.gz", retries=0)
    netrc_file = no_credentials / ".netrc"
    netrc_file.write_text("machine 127.0.0.1 login alice password hunter2\n")
    netrc_file.chmod(0o600)
    assert fetch([server.url("/auth")], tmp_path / "a.tar.gz").read_bytes() == PAYLOAD
    # $NETRC names another file; an entry for another host sends nothing.
    other = tmp_path / "other-netrc"
    other.write_text("machine example.org login bob password other\n")
    monkeypatch.setenv("NETRC", str(other))
    with pytest.raises(TextclfError, match="HTTP 401"):
        fetch([server.url("/auth")], tmp_path / "b.tar.gz", retries=0)
    assert server.authorization == [None, basic(b"alice:hunter2"), None]


def test_environment_credentials_go_to_the_host_of_data_url_only(
    server, backoff_waits, no_credentials, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server.expected_auth = basic(b"alice:hunter2")
    monkeypatch.setenv(download_module.AUTH_ENV, "alice:hunter2")
    assert fetch([server.url("/auth")], tmp_path / "a.tar.gz").read_bytes() == PAYLOAD
    # A mirror on another host ("localhost" is not "127.0.0.1") is not sent data.url's secret.
    mirror = server.url("/auth").replace("127.0.0.1", "localhost")
    with pytest.raises(TextclfError, match="HTTP 401"):
        fetch([server.url("/missing"), mirror], tmp_path / "b.tar.gz", retries=0)
    monkeypatch.setenv(download_module.TOKEN_ENV, "t0ken")  # a bearer token wins over user:password
    server.expected_auth = "Bearer t0ken"
    assert fetch([server.url("/auth")], tmp_path / "c.tar.gz").read_bytes() == PAYLOAD
    assert server.authorization == [basic(b"alice:hunter2"), basic(b"alice:hunter2"), None, "Bearer t0ken"]


def test_a_body_past_the_download_limit_stops_at_the_limit_and_leaves_nothing(
    server, backoff_waits, tmp_path: Path
) -> None:
    limit = 256 * 1024
    with pytest.raises(TextclfError) as error:
        download([server.url("/endless")], tmp_path / "raw" / "a.tar.gz", SHA256, progress=False, max_bytes=limit)
    assert str(error.value) == (
        f"could not download the archive: {server.url('/endless')}: the body sent is over "
        f"data.max_download_bytes={limit} (raise it, or set it to null for no limit, if this source is trusted)"
    )
    assert server.hits["/endless"] == 1 and backoff_waits == []  # not retried
    assert leftovers(tmp_path / "raw") == []
    assert server.endless_sent < ENDLESS_CAP


def test_a_content_length_past_the_download_limit_is_refused_before_reading(
    server, backoff_waits, tmp_path: Path
) -> None:
    with pytest.raises(TextclfError) as error:
        download([server.url("/huge")], tmp_path / "raw" / "a.tar.gz", SHA256, progress=False, max_bytes=1 << 20)
    message = str(error.value)
    assert f"{server.url('/huge')}: Content-Length 1000000000000 is over data.max_download_bytes=1048576" in message
    assert "\n" not in message and leftovers(tmp_path / "raw") == []
    # ... and the next URL is tried: another server may have the right file.
    target = download(
        [server.url("/huge"), server.url("/ok")], tmp_path / "a.tar.gz", SHA256, progress=False, max_bytes=len(PAYLOAD)
    )
    assert target.read_bytes() == PAYLOAD  # exactly at the limit: kept


@pytest.mark.parametrize("source", ["file:///dev/zero", "/dev/zero"])
def test_a_device_is_not_read_as_an_archive(backoff_waits, tmp_path: Path, source: str) -> None:
    with pytest.raises(TextclfError) as error:
        download([source], tmp_path / "raw" / "a.tar.gz", SHA256, progress=False, max_bytes=1 << 20)
    assert str(error.value) == (
        f"could not download the archive: {source}: not a regular file: /dev/zero (a directory, device or pipe)"
    )
    assert leftovers(tmp_path / "raw") == []


def test_a_local_file_past_the_download_limit_is_refused(backoff_waits, tmp_path: Path) -> None:
    archive = tmp_path / "big.tar.gz"
    archive.write_bytes(PAYLOAD)
    for source in (str(archive), archive.as_uri()):
        with pytest.raises(TextclfError, match=f"its size, {len(PAYLOAD)} bytes, is over data.max_download_bytes=1000"):
            download([source], tmp_path / "raw" / "a.tar.gz", SHA256, progress=False, max_bytes=1000)
    assert leftovers(tmp_path / "raw") == []


def test_the_stage_retries_then_uses_the_mirrors(server, backoff_waits, tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config(
        f"data.url={server.url('/flaky/4')}", f"data.mirrors=[{server.url('/ok')}]", f"data.sha256={SHA256}"
    )
    download_stage(cfg, cfg.paths.raw, progress=False)
    assert (cfg.paths.raw / cfg.data.archive_name).read_bytes() == PAYLOAD
    # 1 + RETRIES attempts at data.url, backing off each time, then the mirror.
    assert server.hits["/flaky/4"] == 1 + RETRIES and server.hits["/ok"] == 1
    assert backoff_waits == [BACKOFF_SECONDS * 2**k for k in range(RETRIES)]
