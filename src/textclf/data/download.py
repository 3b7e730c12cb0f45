"""Fetching the corpus archive: http(s), file:// or a plain path, verified by SHA-256.

Each URL gets a few attempts with exponential backoff for faults that may pass (HTTP 5xx,
408 and 429, refused or dropped connections, timeouts); faults that will not pass (HTTP 404
and other 4xx, a missing file, a wrong checksum) fail over to the next URL at once. Every
attempt writes a fresh temporary file that is renamed onto the target only once the whole
body has arrived and its SHA-256 matches, so a dropped connection never leaves corrupt bytes.

What is read is bounded by ``data.max_download_bytes``: a larger Content-Length or file size
is refused before reading, and a body without (or with a lying) Content-Length is counted as
it arrives; only regular files are read, never a device or a pipe (``/dev/zero``).

Credentials never come from the URL (params end up in git, see textclf.config): HTTP basic
auth comes from ~/.netrc (or the file $NETRC names) for the URL's host, and
$TEXTCLF_DOWNLOAD_TOKEN (bearer) or $TEXTCLF_DOWNLOAD_AUTH (``user:password``, basic) is sent
to the host of the first URL (data.url) only, so a mirror elsewhere never sees it. The header
is never forwarded on a redirect.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import netrc
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from tqdm import tqdm

from textclf.atomic import staged_file
from textclf.config import DOWNLOAD_AUTH_HINT
from textclf.errors import TextclfError
from textclf.redact import mask_userinfo

CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60.0  # per socket operation (connect, each read), not for the whole file
RETRIES = 3  # attempts per URL after the first, for transient faults only
BACKOFF_SECONDS = 1.0  # wait before retry k (k = 0, 1, ...) is BACKOFF_SECONDS * 2**k ...
MAX_BACKOFF_SECONDS = 30.0  # ... capped here
RETRY_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})
AUTH_ENV = "TEXTCLF_DOWNLOAD_AUTH"  # user:password, HTTP basic auth for data.url's host
TOKEN_ENV = "TEXTCLF_DOWNLOAD_TOKEN"  # a bearer token for data.url's host
DATA_HOME_ENV = "TEXTCLF_DATA_HOME"  # a directory with a local copy of the corpus (textclf.data.home)
_sleep = time.sleep  # tests replace it to record the backoff without waiting


class ChecksumMismatch(TextclfError):
    pass


class DownloadTooLarge(TextclfError):
    """More than data.max_download_bytes announced or sent: the next URL may serve the right file."""


class IncompleteDownload(OSError):
    """The connection closed before Content-Length bytes arrived."""


def _too_large(shown: str, limit: int, what: str) -> DownloadTooLarge:
    return DownloadTooLarge(
        f"{shown}: {what} is over data.max_download_bytes={limit} "
        "(raise it, or set it to null for no limit, if this source is trusted)"
    )


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _netrc_authorization(host: str) -> str | None:
    """Basic auth for ``host`` from $NETRC, else ~/.netrc (its ``default`` entry too)."""
    named = os.environ.get("NETRC")
    path = Path(named).expanduser() if named else Path("~/.netrc").expanduser()
    if not path.is_file():
        return None
    try:
        # Given no file, netrc reads ~/.netrc and refuses it when others can read its passwords.
        entry = netrc.netrc(str(path) if named else None).authenticators(host)
    except netrc.NetrcParseError as error:
        raise TextclfError(f"{path}: cannot read it as a netrc file ({error.msg}, line {error.lineno})") from None
    except OSError as error:
        raise TextclfError(f"{path}: cannot read it ({error.strerror or error})") from None
    if entry is None:
        return None
    login, _, password = entry
    return _basic(login or "", password or "")


def authorization(url: str, auth_host: str | None) -> str | None:
    """The Authorization header for an http(s) ``url``: from the environment when its host is
    ``auth_host`` (data.url's), else from netrc; None when there are no credentials for it."""
    host = urlparse(url).hostname
    if host is None:
        return None
    if auth_host is not None and host == auth_host.lower():
        token, auth = os.environ.get(TOKEN_ENV), os.environ.get(AUTH_ENV)
        if token:
            return f"Bearer {token}"
        if auth:
            user, colon, password = auth.partition(":")
            if not colon:
                raise TextclfError(f"${AUTH_ENV}: expected user:password (its value is not shown)")
            return _basic(user, password)
    return _netrc_authorization(host)


def _open_file(path: Path, shown: str, max_bytes: int | None) -> tuple[BinaryIO, int | None]:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if not path.is_file():
        raise OSError(f"not a regular file: {path} (a directory, device or pipe)")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise _too_large(shown, max_bytes, f"its size, {size} bytes,")
    return open(path, "rb"), size


def _open_source(
    source: str, timeout: float, max_bytes: int | None = None, auth_host: str | None = None
) -> tuple[BinaryIO, int | None]:
    """Opens a URL or local path for reading; returns the stream and its size if known."""
    parsed = urlparse(source)
    scheme, shown = parsed.scheme, mask_userinfo(source)
    if scheme in ("http", "https", "file") and "@" in parsed.netloc:
        raise TextclfError(f"{shown}: credentials in the URL are not accepted; {DOWNLOAD_AUTH_HINT}")
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise TextclfError(f"{shown}: a file:// URL names a local file (file:///path), not host {parsed.netloc}")
        return _open_file(Path(urllib.request.url2pathname(parsed.path)), shown, max_bytes)
    if scheme in ("http", "https"):
        request = urllib.request.Request(source)
        header = authorization(source, auth_host)
        if header is not None:
            request.add_unredirected_header("Authorization", header)  # never sent on to a redirect
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
        length = response.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else None
        if max_bytes is not None and size is not None and size > max_bytes:
            response.close()
            raise _too_large(shown, max_bytes, f"Content-Length {size}")
        return response, size
    if scheme and len(scheme) > 1:  # "C:" on Windows is a drive, not a scheme
        raise TextclfError(f"{shown}: unsupported URL scheme '{scheme}' (use http, https, file or a path)")
    return _open_file(Path(source).expanduser(), shown, max_bytes)


def fetch(
    source: str,
    target: Path,
    sha256: str,
    progress: bool = True,
    timeout: float = TIMEOUT_SECONDS,
    max_bytes: int | None = None,
    auth_host: str | None = None,
) -> None:
    """Copies ``source`` to ``target`` if its SHA-256 is ``sha256``; nothing is left otherwise.

    Raises IncompleteDownload when fewer bytes than the announced Content-Length arrive
    (urllib returns a short body without complaint when a server closes early), and
    DownloadTooLarge past ``max_bytes`` (None: no limit).
    """
    stream, size = _open_source(source, timeout, max_bytes, auth_host)
    digest = hashlib.sha256()
    shown = mask_userinfo(source)
    label = Path(urlparse(source).path).name or shown
    received = 0
    with (
        stream,
        staged_file(target) as out,
        tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress) as bar,
    ):
        # Never more than one byte past the limit: enough to know the body is too large.
        def chunk_size() -> int:
            return CHUNK_BYTES if max_bytes is None else min(CHUNK_BYTES, max_bytes + 1 - received)

        for chunk in iter(lambda: stream.read(chunk_size()), b""):
            if max_bytes is not None and received + len(chunk) > max_bytes:
                raise _too_large(shown, max_bytes, "the body sent")
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
            raise ChecksumMismatch(f"checksum mismatch for {shown}: expected sha256 {sha256.lower()}, got {actual}")


def _is_transient(error: BaseException) -> bool:
    """True for faults that a later attempt at the same URL may not hit."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code in RETRY_HTTP_STATUS
    if isinstance(error, urllib.error.URLError):  # no HTTP answer: refused, reset, DNS, timeout
        # A name that does not resolve ("Name or service not known", or "Temporary failure in
        # name resolution" with no network at all) stays so for the seconds a retry waits.
        permanent = (
            FileNotFoundError | PermissionError | IsADirectoryError | ssl.SSLCertVerificationError | socket.gaierror
        )
        return not isinstance(error.reason, permanent)
    return isinstance(error, IncompleteDownload | TimeoutError | ConnectionError | http.client.HTTPException)


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
    max_bytes: int | None = None,
    auth_host: str | None = None,
) -> str | None:
    """Tries ``url`` up to ``1 + retries`` times; returns None on success, else why it failed."""
    for attempt in range(1 + max(0, retries)):
        if attempt:
            _sleep(min(backoff * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS))
        try:
            fetch(url, target, sha256, progress=progress, timeout=timeout, max_bytes=max_bytes, auth_host=auth_host)
            return None
        except (ChecksumMismatch, DownloadTooLarge) as error:  # other bytes: retrying won't help
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
    max_bytes: int | None = None,
    hint: str = "",
) -> Path:
    """Fetches the first of ``urls`` that works and matches ``sha256`` into ``target``.

    Transient faults are retried ``retries`` times per URL, waiting ``backoff`` seconds, then
    twice that, and so on; ``timeout`` bounds each connect and read; ``max_bytes`` what one
    URL may send. Credentials from the environment go to the first URL's host only. Raises one
    TextclfError naming every URL tried and why each failed, ending with ``hint``.
    """
    target = Path(target)
    urls = list(urls)
    auth_host = urlparse(urls[0]).hostname if urls else None
    failures = []
    for url in urls:
        failure = fetch_with_retries(url, target, sha256, progress, retries, backoff, timeout, max_bytes, auth_host)
        if failure is None:
            return target
        failures.append(failure)
    if not failures:
        raise TextclfError("no download URL configured (set data.url)")
    raise TextclfError("could not download the archive: " + "; ".join([*failures, *([hint] if hint else [])]))
