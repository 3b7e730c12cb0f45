"""Fetching the corpus archive: http(s), file:// or a plain path, verified by SHA-256.

Each URL gets a few attempts with exponential backoff for faults that may pass (HTTP 5xx,
408 and 429, refused or dropped connections, timeouts); faults that will not pass (HTTP 404
and other 4xx, a missing file, a wrong checksum) fail over to the next URL at once. Every
attempt writes a fresh temporary file that is renamed onto the target only once the whole
body has arrived and its SHA-256 matches, so a dropped connection never leaves corrupt bytes.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import shutil
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Iterable
from urllib.parse import unquote, urlparse

from tqdm import tqdm

from textclf.atomic import staged_file
from textclf.errors import TextclfError
from textclf.tracking import mask_userinfo

CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60.0  # per socket operation (connect, each read), not for the whole file
RETRIES = 3  # attempts per URL after the first, for transient faults only
BACKOFF_SECONDS = 1.0  # wait before retry k (k = 0, 1, ...) is BACKOFF_SECONDS * 2**k ...
MAX_BACKOFF_SECONDS = 30.0  # ... capped here
RETRY_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_sleep = time.sleep  # tests replace it to record the backoff without waiting


class ChecksumMismatch(TextclfError):
    pass


class IncompleteDownload(OSError):
    """The connection closed before Content-Length bytes arrived."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open_source(source: str, timeout: float) -> tuple[BinaryIO, int | None]:
    """Opens a URL or local path for reading; returns the stream and its size if known."""
    parsed = urlparse(source)
    scheme = parsed.scheme
    if scheme in ("http", "https", "file"):
        request = urllib.request.Request(source)
        if parsed.username is not None:  # https://user:pass@host/...: HTTP basic auth
            credentials = f"{unquote(parsed.username)}:{unquote(parsed.password or '')}"
            request = urllib.request.Request(
                parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl(),
                headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()},
            )
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
        length = response.headers.get("Content-Length")
        return response, int(length) if length and length.isdigit() else None
    if scheme and len(scheme) > 1:  # "C:" on Windows is a drive, not a scheme
        raise TextclfError(
            f"{mask_userinfo(source)}: unsupported URL scheme '{scheme}' (use http, https, file or a path)"
        )
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return open(path, "rb"), path.stat().st_size


def fetch(
    source: str,
    target: Path,
    sha256: str,
    progress: bool = True,
    timeout: float = TIMEOUT_SECONDS,
) -> None:
    """Copies ``source`` to ``target`` if its SHA-256 is ``sha256``; nothing is left otherwise.

    Raises IncompleteDownload when fewer bytes than the announced Content-Length arrive
    (urllib returns a short body without complaint when a server closes early).
    """
    stream, size = _open_source(source, timeout)
    digest = hashlib.sha256()
    shown = mask_userinfo(source)
    label = Path(urlparse(source).path).name or shown
    received = 0
    with stream, staged_file(target) as out, tqdm(
        total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress
    ) as bar:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            try:
                out.write(chunk)
            except OSError as error:  # disk full, quota: not the URL's fault, so no failover
                raise TextclfError(f"cannot write {target}: {error.strerror or error}") from error
            received += len(chunk)
            bar.update(len(chunk))
        if size is not None and received < size:
            raise IncompleteDownload(f"connection closed after {received} of {size} bytes")
        actual = digest.hexdigest()
        if actual != sha256.lower():
            raise ChecksumMismatch(
                f"checksum mismatch for {shown}: expected sha256 {sha256.lower()}, got {actual}"
            )


def _is_transient(error: BaseException) -> bool:
    """True for faults that a later attempt at the same URL may not hit."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code in RETRY_HTTP_STATUS
    if isinstance(error, urllib.error.URLError):  # no HTTP answer: refused, reset, DNS, timeout
        permanent = FileNotFoundError | PermissionError | IsADirectoryError | ssl.SSLCertVerificationError
        return not isinstance(error.reason, permanent)
    return isinstance(
        error, IncompleteDownload | TimeoutError | ConnectionError | http.client.HTTPException
    )


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, TimeoutError):
        return "timed out"
    reason = getattr(error, "reason", None) or error
    return str(reason).replace("\n", " ") or type(error).__name__


def fetch_with_retries(
    url: str,
    target: Path,
    sha256: str,
    progress: bool = True,
    retries: int = RETRIES,
    backoff: float = BACKOFF_SECONDS,
    timeout: float = TIMEOUT_SECONDS,
) -> str | None:
    """Tries ``url`` up to ``1 + retries`` times; returns None on success, else why it failed."""
    for attempt in range(1 + max(0, retries)):
        if attempt:
            _sleep(min(backoff * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS))
        try:
            fetch(url, target, sha256, progress=progress, timeout=timeout)
            return None
        except ChecksumMismatch as error:  # the server has other bytes: retrying won't help
            return str(error)
        except TextclfError:
            raise
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as error:
            if isinstance(error, urllib.error.HTTPError):
                error.close()  # an HTTPError holds the open response
            failure = f"{mask_userinfo(url)}: {_reason(error)}"
            if not _is_transient(error):
                return failure
    return f"{failure} (after {1 + max(0, retries)} attempts)"


def download(
    urls: Iterable[str],
    target: str | Path,
    sha256: str,
    progress: bool = True,
    retries: int = RETRIES,
    backoff: float = BACKOFF_SECONDS,
    timeout: float = TIMEOUT_SECONDS,
) -> Path:
    """Fetches the first of ``urls`` that works and matches ``sha256`` into ``target``.

    Transient faults are retried ``retries`` times per URL, waiting ``backoff`` seconds, then
    twice that, and so on; ``timeout`` bounds each connect and read. Raises one TextclfError
    naming every URL tried and why each failed.
    """
    target = Path(target)
    failures = []
    for url in urls:
        failure = fetch_with_retries(url, target, sha256, progress, retries, backoff, timeout)
        if failure is None:
            return target
        failures.append(failure)
    if not failures:
        raise TextclfError("no download URL configured (set data.url)")
    raise TextclfError("could not download the archive: " + "; ".join(failures))


def copy_if_cached(cached: Path, target: Path) -> bool:
    """Hard-links (or copies) an already verified archive; True when it did."""
    if not cached.is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.hardlink_to(cached)
    except OSError:
        shutil.copyfile(cached, target)
    return True
