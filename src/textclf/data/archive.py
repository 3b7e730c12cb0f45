"""Reading the corpus archive safely: messages are read from the tar stream into memory.

Nothing is extracted to disk, and members that could escape a target directory (absolute
paths, ``..``), links and device files are refused outright, as a hostile archive could
use them when extracted by a less careful tool.
"""

from __future__ import annotations

import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

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


def read_messages(archive: str | Path, splits: tuple[str, ...]) -> list[Message]:
    """Returns every ``<split>/<group>/<name>`` file of the archive, sorted, as raw bytes.

    Raises TextclfError for a corrupt or truncated archive, an unsafe member, or a split
    directory that holds no message.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise TextclfError(f"{archive}: archive not found (run the download stage first)")
    messages = []
    try:
        # "r|*": one sequential pass over the compressed stream, whatever the compression.
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                _check_member(archive, member)
                parts = posixpath.normpath(member.name).split("/")
                if not member.isfile() or len(parts) != 3 or parts[0] not in splits:
                    continue
                handle = tar.extractfile(member)
                assert handle is not None  # regular files always have a payload
                messages.append(Message(parts[0], parts[1], parts[2], handle.read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise TextclfError(f"{archive}: corrupt or truncated archive ({error})") from error
    for split in splits:
        if not any(message.split == split for message in messages):
            raise TextclfError(f"{archive}: no messages under '{split}/<group>/' in the archive")
    messages.sort(key=lambda m: (m.split, m.group, m.name))
    return messages
