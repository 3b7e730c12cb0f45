"""Fetching the archive: plain path, file:// and http:// (a local server), failover, checksums,
and the download stage's raw directory (the archive and source.json, or nothing at all).

Nothing here leaves 127.0.0.1; the http server serves the tiny archive's directory.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from textclf.config import Config
from textclf.data.archive import content_sha256
from textclf.data.download import BACKOFF_SECONDS, RETRIES, download
from textclf.data.sources.base import RECORD_FILE, SourceRecord
from textclf.errors import TextclfError
from textclf.hashing import file_sha256
from textclf.stages.download import download as download_stage

from conftest import serve_directory

WRONG_SHA = "0" * 64
# The stage retries a transient fault RETRIES times, waiting BACKOFF_SECONDS * 2**k before retry k.
STAGE_WAITS = [BACKOFF_SECONDS * 2**k for k in range(RETRIES)]


@pytest.fixture
def http_server(tiny_archive: tuple[Path, str]):
    """Serves the tiny archive's directory on 127.0.0.1:<free port>; yields the base URL."""
    archive, _ = tiny_archive
    with serve_directory(archive.parent) as url:
        yield url


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_only(directory: Path, names: set[str]) -> None:
    present = {p.name for p in directory.iterdir()} if directory.exists() else set()
    assert present == names, f"unexpected contents of {directory}: {sorted(present)}"


def fetched(cfg: Config, raw: Path) -> Path:
    """Runs the download stage into ``raw``; checks what it wrote there; returns the archive."""
    record = download_stage(cfg, raw, progress=False)
    archive = raw / cfg.data.archive_name
    assert_only(raw, {cfg.data.archive_name, RECORD_FILE})
    assert SourceRecord.from_json(json.loads((raw / RECORD_FILE).read_text())) == record
    assert record.content_sha256 == content_sha256(archive)
    assert record.inputs == {cfg.data.url: cfg.data.sha256.lower()}
    assert [p.name for p in raw.parent.iterdir() if ".partial-" in p.name] == []
    return archive


def assert_nothing_written(raw: Path) -> None:
    """A failed stage leaves no raw directory and no staging directory beside it."""
    assert not raw.exists()
    if raw.parent.exists():
        assert [p.name for p in raw.parent.iterdir() if ".partial-" in p.name] == []


# --- sources that work -------------------------------------------------------------------


def test_plain_local_path(tiny_config, tiny_archive, tmp_path: Path) -> None:
    archive, sha = tiny_archive
    cfg = tiny_config()
    path = fetched(cfg, tmp_path / "raw")
    assert path.read_bytes() == archive.read_bytes()
    assert file_sha256(path) == sha


def test_file_url(tiny_config, tiny_archive, tmp_path: Path) -> None:
    archive, sha = tiny_archive
    cfg = tiny_config(f"data.url={archive.as_uri()}")
    assert cfg.data.url.startswith("file://")
    path = fetched(cfg, tmp_path / "raw")
    assert path.read_bytes() == archive.read_bytes()


def test_http_url(tiny_config, tiny_archive, http_server: str, tmp_path: Path) -> None:
    archive, sha = tiny_archive
    path = fetched(tiny_config(f"data.url={http_server}/{archive.name}"), tmp_path / "raw")
    assert file_sha256(path) == sha
    assert path.read_bytes() == archive.read_bytes()


def test_a_verified_download_is_kept_and_a_rerun_fetches_nothing(tiny_config, tiny_archive, tmp_path: Path) -> None:
    archive, sha = tiny_archive
    copy = tmp_path / "served" / archive.name
    copy.parent.mkdir()
    copy.write_bytes(archive.read_bytes())
    cfg = tiny_config(f"data.url={copy}")
    fetched(cfg, tmp_path / "first")
    assert file_sha256(cfg.paths.cache / "downloads" / sha / cfg.data.archive_name) == sha
    copy.unlink()  # the URL serves nothing now: the kept copy is taken
    path = fetched(cfg, tmp_path / "second")
    assert path.read_bytes() == archive.read_bytes()


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
    cfg = tiny_config(f"data.url=http://127.0.0.1:{closed_port}/x", f"data.mirrors=[{archive}]")
    path = fetched(cfg, tmp_path / "raw")
    assert file_sha256(path) == sha
    assert backoff_waits == STAGE_WAITS  # a refused connection is transient: retried with backoff


@pytest.mark.parametrize("scheme", ["path", "file"])
def test_missing_file_falls_back_to_the_http_mirror_without_retrying(
    tiny_config, tiny_archive, http_server: str, backoff_waits: list[float], tmp_path: Path, scheme: str
) -> None:
    archive, sha = tiny_archive
    missing = tmp_path / "nowhere" / "missing.tar.gz"
    first = str(missing) if scheme == "path" else missing.as_uri()
    cfg = tiny_config(f"data.url={first}", f"data.mirrors=[{http_server}/{archive.name}]")
    path = fetched(cfg, tmp_path / "raw")
    assert file_sha256(path) == sha
    assert backoff_waits == []  # a missing file will not appear on retry


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
    cfg = tiny_config(f"data.url={url}", f"data.sha256={WRONG_SHA}")
    raw = tmp_path / "raw"
    with pytest.raises(TextclfError) as caught:
        download_stage(cfg, raw, progress=False)
    message = str(caught.value)
    assert WRONG_SHA in message
    assert sha in message
    assert backoff_waits == []  # other bytes will not change on retry
    assert_nothing_written(raw)  # no archive, no *.partial-* temp file
    assert_only(cfg.paths.cache / "downloads", set())  # and nothing kept for a rerun


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
    cfg = tiny_config(f"data.url={url}", "data.mirrors=[]")
    raw = tmp_path / "raw"
    with pytest.raises(TextclfError) as caught:
        download_stage(cfg, raw, progress=False)
    assert url in str(caught.value)
    assert f"after {RETRIES + 1} attempts" in str(caught.value)
    assert backoff_waits == STAGE_WAITS
    assert_nothing_written(raw)


def test_missing_local_path_without_mirror_names_the_path(tmp_path: Path, backoff_waits: list[float]) -> None:
    missing = tmp_path / "missing.tar.gz"
    with pytest.raises(TextclfError, match="missing.tar.gz"):
        download([str(missing)], tmp_path / "out" / "a.tar.gz", WRONG_SHA, progress=False)


@pytest.mark.parametrize("url", ["ftp://example.org/20news.tar.gz", "s3://bucket/20news.tar.gz"])
def test_unsupported_scheme(tiny_config, tmp_path: Path, url: str, backoff_waits: list[float]) -> None:
    scheme = url.split(":", 1)[0]
    cfg = tiny_config(f"data.url={url}")
    with pytest.raises(TextclfError, match=rf"unsupported URL scheme '{scheme}'") as caught:
        download_stage(cfg, tmp_path / "raw", progress=False)
    assert url in str(caught.value)
    assert_nothing_written(tmp_path / "raw")


def test_no_url_at_all(tmp_path: Path) -> None:
    with pytest.raises(TextclfError, match="no download URL"):
        download([], tmp_path / "a.tar.gz", WRONG_SHA, progress=False)
