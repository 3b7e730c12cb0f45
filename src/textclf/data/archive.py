"""Reading the corpus archive safely: messages are read from the tar stream into memory.

Nothing is extracted to disk, and members that could escape a target directory (absolute
paths, ``..``), links and device files are refused outright, as a hostile archive could
use them when extracted by a less careful tool.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import posixpath
import tarfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from textclf.errors import TextclfError


@dataclass(frozen=True)
class Message:
    split: str  # the top-level directory, e.g. "20news-bydate-train"
    group: str  # the newsgroup directory, i.e. the label
    name: str  # the message id (file name)
    raw: bytes


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    normalized = posixpath.normpath(name)
    if name.startswith(("/", "\\")) or normalized == ".." or normalized.startswith("../"):
        raise TextclfError(f"{archive}: refusing member '{name}': it escapes the target directory")
    if member.issym() or member.islnk():
        raise TextclfError(f"{archive}: refusing member '{name}': links are not allowed")
    if not (member.isfile() or member.isdir()):
        raise TextclfError(
            f"{archive}: refusing member '{name}': not a regular file or directory (device, fifo)"
        )


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile ends the archive silently at a damaged or cut header past the first member;
    here that is an error, so a corrupt archive can never pass for a shorter one."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):  # type: ignore[no-untyped-def]
        try:
            return super().frombuf(buf, encoding, errors)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError, tarfile.EmptyHeaderError) as error:
            raise tarfile.ReadError(f"damaged member header: {error or 'end of data'}") from None


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
        opener = next((opener for prefix, opener in _COMPRESSION if magic.startswith(prefix)), None)
        if opener is None:
            yield raw
            return
        with opener(raw) as stream:
            yield stream


def read_messages(archive: str | Path, splits: tuple[str, ...]) -> list[Message]:
    """Returns every ``<split>/<group>/<name>`` file of the archive, sorted, as raw bytes.

    Raises TextclfError for a corrupt or truncated archive, an unsafe member, or a split or
    category directory that holds no message.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise TextclfError(f"{archive}: archive not found (run the download stage first)")
    messages = []
    categories = set()  # (split, group) of every category directory, empty or not
    try:
        # "r|": one sequential pass over the decompressed stream.
        with _decompressed(archive) as stream, tarfile.open(
            fileobj=stream, mode="r|", tarinfo=_StrictTarInfo
        ) as tar:
            for member in tar:
                _check_member(archive, member)
                parts = posixpath.normpath(member.name).split("/")
                if member.isdir() and len(parts) == 2 and parts[0] in splits:
                    categories.add((parts[0], parts[1]))
                if not member.isfile() or len(parts) != 3 or parts[0] not in splits:
                    continue
                handle = tar.extractfile(member)
                assert handle is not None  # regular files always have a payload
                messages.append(Message(parts[0], parts[1], parts[2], handle.read()))
            # Reading to the end makes the decompressor check the stream's CRC and length.
            for _ in iter(lambda: stream.read(1 << 20), b""):
                pass
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as error:
        raise TextclfError(f"{archive}: corrupt or truncated archive ({error})") from error
    for split in splits:
        if not any(message.split == split for message in messages):
            raise TextclfError(f"{archive}: no messages under '{split}/<group>/' in the archive")
    empty = sorted(categories - {(m.split, m.group) for m in messages})
    if empty:
        names = ", ".join(f"'{split}/{group}/'" for split, group in empty)
        raise TextclfError(f"{archive}: no messages in category directory {names} (remove it or add messages)")
    messages.sort(key=lambda m: (m.split, m.group, m.name))
    return messages
