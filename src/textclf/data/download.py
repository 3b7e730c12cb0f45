"""Fetching the corpus archive: http(s), file:// or a plain path, verified by SHA-256."""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Iterable
from urllib.parse import urlparse

from tqdm import tqdm

from textclf.atomic import staged_file
from textclf.errors import TextclfError

CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60


class ChecksumMismatch(TextclfError):
    pass


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open_source(source: str) -> tuple[BinaryIO, int | None]:
    """Opens a URL or local path for reading; returns the stream and its size if known."""
    scheme = urlparse(source).scheme
    if scheme in ("http", "https", "file"):
        response = urllib.request.urlopen(source, timeout=TIMEOUT_SECONDS)  # noqa: S310
        length = response.headers.get("Content-Length")
        return response, int(length) if length and length.isdigit() else None
    if scheme and len(scheme) > 1:  # "C:" on Windows is a drive, not a scheme
        raise TextclfError(f"{source}: unsupported URL scheme '{scheme}' (use http, https, file or a path)")
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return open(path, "rb"), path.stat().st_size


def fetch(source: str, target: Path, sha256: str, progress: bool = True) -> None:
    """Copies ``source`` to ``target`` if its SHA-256 is ``sha256``; nothing is left otherwise."""
    stream, size = _open_source(source)
    digest = hashlib.sha256()
    label = Path(urlparse(source).path).name or source
    with stream, staged_file(target) as out, tqdm(
        total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress
    ) as bar:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
        actual = digest.hexdigest()
        if actual != sha256.lower():
            raise ChecksumMismatch(
                f"checksum mismatch for {source}: expected sha256 {sha256.lower()}, got {actual}"
            )


def download(urls: Iterable[str], target: str | Path, sha256: str, progress: bool = True) -> Path:
    """Fetches the first of ``urls`` that works and matches ``sha256`` into ``target``.

    Raises one TextclfError naming every URL tried and why each failed.
    """
    target = Path(target)
    failures = []
    for url in urls:
        try:
            fetch(url, target, sha256, progress=progress)
            return target
        except ChecksumMismatch as error:
            failures.append(str(error))
        except TextclfError:
            raise
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            failures.append(f"{url}: {reason}")
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
