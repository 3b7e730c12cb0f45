"""The data home: a local copy of the corpus, taken before any download ($TEXTCLF_DATA_HOME).

Like scikit-learn's SCIKIT_LEARN_DATA, ``$TEXTCLF_DATA_HOME`` names a directory. The download
stage looks there first for ``<data.archive_name>`` (the archive) and then for ``<stem>/``, the
archive unpacked (stem: the name without .tar.gz, .tgz, .tar.bz2, .tar.xz or .tar), a directory
holding ``<data.train_dir>/`` and ``<data.test_dir>/``. A copy is taken only if it is the
pinned corpus: its SHA-256 is ``data.sha256`` (the very archive), or its content hash is
``data.content_sha256`` (the same files with the same bytes, packed otherwise or unpacked; see
textclf.data.archive.content_line). Anything else is refused, naming the hashes.

What the stage writes to ``<raw>/<archive_name>`` is the copy's bytes for an archive, and for
a directory a tar.gz written deterministically (sorted members, fixed mtimes and owners, gzip
without name or time): its bytes differ from the canonical archive, so DVC reruns preprocess,
whose outputs are the same byte for byte (they depend on the content only), and nothing after.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from textclf.atomic import staged_file
from textclf.data.archive import (
    ArchiveTooLarge,
    content_hash,
    content_line,
    content_sha256,
)
from textclf.data.download import CHUNK_BYTES, DATA_HOME_ENV, _open_file, fetch
from textclf.errors import TextclfError

if TYPE_CHECKING:
    from textclf.data.sources.usenet import UsenetArchive

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")


def data_home() -> Path | None:
    home = os.environ.get(DATA_HOME_ENV)
    return Path(home).expanduser() if home else None


def unpacked_name(archive_name: str) -> str:
    """The directory an unpacked copy has: ``20news-bydate.tar.gz`` -> ``20news-bydate``."""
    for suffix in ARCHIVE_SUFFIXES:
        if archive_name.endswith(suffix) and len(archive_name) > len(suffix):
            return archive_name[: -len(suffix)]
    return archive_name + ".d"


def local_copy(cfg: UsenetArchive, home: Path | None) -> Path | None:
    """The archive, else the unpacked directory, in ``home``; None if neither is there."""
    if home is None:
        return None
    for candidate in (home / cfg.archive_name, home / unpacked_name(cfg.archive_name)):
        if candidate.exists():
            return candidate
    return None


def offline_hint(cfg: UsenetArchive, home: Path | None) -> str:
    """What to do when no URL could be reached: the end of the download stage's error line."""
    if home is None:
        return (
            f"to use a local copy, set {DATA_HOME_ENV} to a directory holding {cfg.archive_name} "
            f"or {unpacked_name(cfg.archive_name)}/ (README: Running on the real corpus offline)"
        )
    return f"{DATA_HOME_ENV}={home} holds neither {cfg.archive_name} nor {unpacked_name(cfg.archive_name)}/"


def _refused(shown: str, found: str, cfg: UsenetArchive) -> TextclfError:
    pinned = cfg.content_sha256 or "not set, so only data.sha256 is accepted"
    return TextclfError(
        f"{shown}: not the pinned corpus: {found}; data.sha256 is {cfg.sha256.lower()}, "
        f"data.content_sha256 is {pinned} (remove the copy from ${DATA_HOME_ENV}, or pin its hashes in conf/data/)"
    )


def _sha256(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _take_archive(cfg: UsenetArchive, source: Path, target: Path) -> str:
    handle, _ = _open_file(source, str(source), cfg.max_download_bytes)  # a regular file, within the limit
    with handle:
        actual = _sha256(handle)
    if actual == cfg.sha256.lower():
        how = "sha256 matches data.sha256"
    else:
        content = content_sha256(source, cfg.max_archive_bytes)
        if cfg.content_sha256 is None or content != cfg.content_sha256.lower():
            raise _refused(str(source), f"its sha256 is {actual} and its content sha256 {content}", cfg)
        how = "a re-pack: its content sha256 matches data.content_sha256"
    # Copied and checked again as it is copied: the bytes written are the bytes hashed.
    fetch(str(source), target, actual, progress=False, max_bytes=cfg.max_download_bytes)
    return how


def _regular_files(root: Path, max_bytes: int | None) -> tuple[list[str], list[str]]:
    """(directories, files) under ``root`` as sorted relative '/' paths. Links, devices and
    pipes are refused, like such members of an archive; at most ``max_bytes`` in all."""
    directories, files, total = [], [], 0
    for top, dir_names, file_names in os.walk(root):
        dir_names.sort(key=os.fsencode)
        relative = Path(top).relative_to(root).as_posix()
        for name in sorted(dir_names + file_names, key=os.fsencode):
            path = Path(top) / name
            shown = name if relative == "." else f"{relative}/{name}"
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise TextclfError(f"{root}: refusing '{shown}': links are not allowed")
            if stat.S_ISDIR(mode):
                directories.append(shown)
            elif stat.S_ISREG(mode):
                files.append(shown)
                total += path.lstat().st_size
            else:
                raise TextclfError(f"{root}: refusing '{shown}': not a regular file or directory (device, fifo)")
    if max_bytes is not None and total > max_bytes:
        raise ArchiveTooLarge(
            f"{root}: holds more than data.max_archive_bytes={max_bytes} bytes; raise data.max_archive_bytes, "
            "or set it to null for no limit, if this copy is trusted"
        )
    return sorted(directories, key=os.fsencode), sorted(files, key=os.fsencode)


class _Hashing:
    """A reader that hashes what is read through it."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle, self.digest = handle, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self.digest.update(chunk)
        return chunk


def _tar_info(name: str, is_dir: bool, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = 0o755 if is_dir else 0o644
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0, 0, 0, "", ""
    return info


def _take_directory(cfg: UsenetArchive, source: Path, target: Path) -> str:
    """Packs ``source`` into ``target`` (a tar.gz) if its files are the pinned corpus."""
    directories, files = _regular_files(source, cfg.max_archive_bytes)
    lines = []
    with staged_file(target) as out:
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as packed,
            tarfile.open(
                fileobj=packed, mode="w|", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape"
            ) as tar,
        ):
            for name in directories:
                tar.addfile(_tar_info(name, is_dir=True))
            for name in files:
                with open(source / name, "rb") as handle:
                    hashed = _Hashing(handle)  # one read: the bytes packed are the bytes hashed
                    tar.addfile(_tar_info(name, is_dir=False, size=os.fstat(handle.fileno()).st_size), hashed)
                lines.append(content_line(name, hashed.digest.hexdigest()))
        content = content_hash(lines)
        if cfg.content_sha256 is None or content != cfg.content_sha256.lower():
            raise _refused(f"{source}/", f"its content sha256 is {content}", cfg)  # nothing is left
    return "unpacked: its content sha256 matches data.content_sha256"


def take_local_copy(cfg: UsenetArchive, source: Path, target: Path) -> str:
    """Writes ``target`` from the local copy ``source`` (an archive or an unpacked directory)
    if it is the pinned corpus, else raises one TextclfError naming the hashes; returns how
    it was recognized. Nothing is left at ``target`` on failure."""
    if source.is_dir():
        return _take_directory(cfg, source, target)
    return _take_archive(cfg, source, target)
