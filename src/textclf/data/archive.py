"""Reading the corpus archive safely: messages are read from the tar stream into memory.

Nothing is extracted to disk, and members that could escape a target directory (absolute
paths, ``..``), links and device files are refused outright, as a hostile archive could
use them when extracted by a less careful tool. What is read is bounded: each message by
``data.max_document_bytes`` (checked on its header before its bytes are read), the whole
decompressed stream by ``data.max_archive_bytes`` (counted as it is read, so a compression
bomb stops at the limit whatever its headers say).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from textclf.errors import TextclfError


@dataclass(frozen=True)
class Message:
    split: str  # the top-level directory, e.g. "20news-bydate-train"
    group: str  # the newsgroup directory, i.e. the label
    name: str  # the message id (file name)
    raw: bytes


ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")  # a member, an empty zip, a spanned one
# tarfile reads a pax or GNU long-name header whole into memory; real ones hold a few names
# and times, so a larger one is a corrupt or hostile archive.
MAX_METADATA_HEADER_BYTES = 1 << 20
_METADATA_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


class ArchiveTooLarge(TextclfError):
    pass


def _limit_hint(key: str) -> str:
    return f"raise data.{key}, or set it to null for no limit, if this archive is trusted"


class _Bounded:
    """A read-only stream that raises ArchiveTooLarge once more than ``limit`` bytes were read."""

    def __init__(self, stream: BinaryIO, archive: Path, limit: int | None) -> None:
        self._stream, self._archive, self._limit, self.read_bytes = stream, archive, limit, 0

    def read(self, size: int = -1) -> bytes:
        if self._limit is not None and (size is None or size < 0):
            size = self._limit + 1 - self.read_bytes  # never more than one byte past the limit
        chunk = self._stream.read(size)
        self.read_bytes += len(chunk)
        if self._limit is not None and self.read_bytes > self._limit:
            raise ArchiveTooLarge(
                f"{self._archive}: decompresses to more than data.max_archive_bytes={self._limit} bytes; "
                + _limit_hint("max_archive_bytes")
            )
        return chunk


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    normalized = posixpath.normpath(name)
    if name.startswith(("/", "\\")) or normalized == ".." or normalized.startswith("../"):
        raise TextclfError(f"{archive}: refusing member '{name}': it escapes the target directory")
    if member.issym() or member.islnk():
        raise TextclfError(f"{archive}: refusing member '{name}': links are not allowed")
    if not (member.isfile() or member.isdir()):
        raise TextclfError(f"{archive}: refusing member '{name}': not a regular file or directory (device, fifo)")


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile ends the archive silently at a damaged or cut header past the first member;
    here that is an error, so a corrupt archive can never pass for a shorter one."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):  # type: ignore[no-untyped-def]
        try:
            return super().frombuf(buf, encoding, errors)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError, tarfile.EmptyHeaderError) as error:
            raise tarfile.ReadError(f"damaged member header: {error or 'end of data'}") from None

    def _proc_member(self, tar):  # type: ignore[no-untyped-def]
        if self.type in _METADATA_TYPES and self.size > MAX_METADATA_HEADER_BYTES:
            raise tarfile.ReadError(f"a {self.size}-byte metadata header (pax or long name)")
        return super()._proc_member(tar)


# Decompressors that verify their stream's checksum and length when read to the end.
_COMPRESSION = (
    (b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
)


@contextmanager
def _decompressed(archive: Path) -> Iterator[BinaryIO]:
    with open(archive, "rb") as raw:
        magic = raw.read(6)
        raw.seek(0)
        if magic.startswith(ZIP_MAGIC):
            raise TextclfError(f"{archive}: is a zip file, not a tar archive (repack it as .tar.gz)")
        opener = next((opener for prefix, opener in _COMPRESSION if magic.startswith(prefix)), None)
        if opener is None:
            yield raw
            return
        with opener(raw) as stream:
            yield stream


def looks_like_tar(head: bytes) -> bool:
    """Whether a file starting with ``head`` (its first 512 bytes) is a tar archive, compressed
    (gzip, bzip2, xz) or not (the POSIX "ustar" magic)."""
    return any(head.startswith(prefix) for prefix, _ in _COMPRESSION) or head[257:262] == b"ustar"


# The content hash of a corpus: what it holds, however it is packed. Over every regular file,
# sorted by its path (relative, '/'-separated, normalized; compared as UTF-8 bytes), the line
# ``<hex sha256 of its bytes>  <path>\0`` (sha256sum --zero's format); the hash is the SHA-256 of
# these lines joined. Directories, mtimes, owners, modes, member order and the compression are
# left out, so a re-pack or an unpacked copy of the same files hashes the same. By hand, in an
# unpacked copy: find . -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 sha256sum -z | sha256sum
def content_line(path: str, digest: str) -> bytes:
    return f"{digest}  {path}\0".encode("utf-8", "surrogateescape")


def content_hash(lines: list[bytes]) -> str:
    """The content hash of a corpus from its files' ``content_line``s, in any order."""
    digest = hashlib.sha256()
    for line in sorted(lines, key=_sort_key):
        digest.update(line)
    return digest.hexdigest()


def _sort_key(line: bytes) -> tuple[bytes, bytes]:
    """Path first, then the file's hash (a tar may hold one path twice)."""
    file_hash, _, path = line.partition(b"  ")
    return path, file_hash


@contextmanager
def checked_members(
    archive: Path, max_archive_bytes: int | None
) -> Iterator[Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]]:
    """The archive's members, each checked (``_check_member``), with the tar to read them
    from: one sequential pass over the decompressed stream, at most ``max_archive_bytes``
    decompressed bytes. A corrupt or truncated archive raises one TextclfError, and a stream
    read to its end has its CRC and length checked by the decompressor."""
    if not archive.is_file():
        raise TextclfError(f"{archive}: archive not found (run the download stage first)")
    try:
        # "r|": one sequential pass over the decompressed stream.
        with (
            _decompressed(archive) as decompressed,
            tarfile.open(
                fileobj=(stream := _Bounded(decompressed, archive, max_archive_bytes)),
                mode="r|",
                tarinfo=_StrictTarInfo,
            ) as tar,
        ):

            def checked() -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
                for member in tar:
                    _check_member(archive, member)
                    yield member, tar

            yield checked()
            for _ in iter(lambda: stream.read(1 << 20), b""):
                pass
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as error:
        raise TextclfError(f"{archive}: corrupt or truncated archive ({error})") from error


def _member_sha256(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    handle = tar.extractfile(member)
    assert handle is not None  # regular files always have a payload
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def content_sha256(archive: str | Path, max_archive_bytes: int | None = None) -> str:
    """The content hash (see ``content_line``) of every regular file in ``archive``, read with
    the same checks as ``read_messages`` (unsafe members refused, ``max_archive_bytes``)."""
    archive = Path(archive)
    with checked_members(archive, max_archive_bytes) as members:
        lines = [
            content_line(posixpath.normpath(member.name), _member_sha256(tar, member))
            for member, tar in members
            if member.isfile()
        ]
    return content_hash(lines)


def read_corpus(
    archive: str | Path,
    splits: tuple[str, ...],
    max_document_bytes: int | None = None,
    max_archive_bytes: int | None = None,
) -> tuple[list[Message], str]:
    """Returns every ``<split>/<group>/<name>`` file of the archive as raw bytes, sorted (the
    names in ``article_order``), and the archive's content hash (``content_sha256``), from one
    pass.

    Raises TextclfError for a corrupt or truncated archive, an unsafe member, a split or
    category directory that holds no message, a message over ``max_document_bytes`` or more
    than ``max_archive_bytes`` decompressed (None: no limit).
    """
    archive = Path(archive)
    messages = []
    lines = []  # content_line of every regular file
    categories = set()  # (split, group) of every category directory, empty or not
    with checked_members(archive, max_archive_bytes) as members:
        for member, tar in members:
            path = posixpath.normpath(member.name)
            parts = path.split("/")
            if member.isdir() and len(parts) == 2 and parts[0] in splits:
                categories.add((parts[0], parts[1]))
            if not member.isfile():
                continue
            if len(parts) != 3 or parts[0] not in splits:
                lines.append(content_line(path, _member_sha256(tar, member)))
                continue
            if max_document_bytes is not None and member.size > max_document_bytes:
                raise ArchiveTooLarge(
                    f"{archive}: member '{member.name}' is {member.size} bytes, over "
                    f"data.max_document_bytes={max_document_bytes}; " + _limit_hint("max_document_bytes")
                )
            handle = tar.extractfile(member)
            assert handle is not None  # regular files always have a payload
            raw = handle.read()
            lines.append(content_line(path, hashlib.sha256(raw).hexdigest()))
            messages.append(Message(parts[0], parts[1], parts[2], raw))
    for split in splits:
        if not any(message.split == split for message in messages):
            raise TextclfError(f"{archive}: no messages under '{split}/<group>/' in the archive")
    empty = sorted(categories - {(m.split, m.group) for m in messages})
    if empty:
        names = ", ".join(f"'{split}/{group}/'" for split, group in empty)
        raise TextclfError(f"{archive}: no messages in category directory {names} (remove it or add messages)")
    messages.sort(key=lambda m: (m.split, m.group, article_order(m.name)))
    return messages, content_hash(lines)


def article_order(name: str) -> tuple[list[str | int], str]:
    """A sort key that puts numbered files in number order ('9' before '10'): Usenet article
    numbers grow with time, so data.holdout=last then holds out a group's latest posts. Runs of
    digits compare as numbers, the text between them as text (the pieces alternate, so like is
    compared with like); the name itself breaks ties ('01' and '1')."""
    pieces = re.split(r"(\d+)", name)
    return [int(piece) if index % 2 else piece for index, piece in enumerate(pieces)], name


def read_messages(
    archive: str | Path,
    splits: tuple[str, ...],
    max_document_bytes: int | None = None,
    max_archive_bytes: int | None = None,
) -> list[Message]:
    """``read_corpus``'s messages."""
    return read_corpus(archive, splits, max_document_bytes, max_archive_bytes)[0]
