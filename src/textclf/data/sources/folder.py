"""One folder per class: a directory, or an archive (tar, tar.gz/bz2/xz, zip), local or a URL.

Layouts, found by looking (``data.path`` is the only thing a user names):

    <class>/<files>                 no split: preprocess holds out test and validation
    <split>/<class>/<files>         split folders by data.split_names (train, test, val, ...)

either one also inside ONE wrapping folder (``corpus/<class>/...``, what ``tar czf corpus.tar.gz
corpus`` makes). Files at any depth below a class folder belong to that class. Hidden and system
entries (``.DS_Store``, ``._*``, ``Thumbs.db``, ``__MACOSX/``; base.is_hidden) and files lying
beside the class or split folders (a README) are skipped and counted (SourceRecord.skipped).
Split folder names match case-insensitively, so ``Train/`` is a split, never a class.

The documents are yielded sorted by (split, class, path below the class; numbers in file names
in number order, archive.article_order), whatever the packing:
a directory, its tar.gz and its zip give the same examples in the same order. A directory and a
zip are read in that order directly; a tar stream is read in passes, each keeping at most
READ_BUFFER_BYTES of documents that come early in the archive but late in the order (one pass
when the archive is in order, or when its documents fit in the buffer).

Hashes: ``data.sha256`` pins what the user has in hand, the bytes of an archive file (as for
any download) or, for a directory, its content hash; ``SourceRecord.content_sha256`` is the
content hash of the documents (archive.content_line over each document, its path taken below
the wrapping folder), equal for a directory and any packing of it.
"""

# No `from __future__ import annotations`: the config check (textclf.config) validates values
# against Folder's annotations, which must be objects, not strings to resolve elsewhere.
import bisect
import hashlib
import itertools
import os
import posixpath
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote, urlparse

from pydantic import AfterValidator, ConfigDict, Field
from typing_extensions import TypedDict

from textclf.data import archive
from textclf.data.sources.base import (
    SPLITS,
    TRAIN,
    DataSource,
    Example,
    Limits,
    SourceRecord,
    check_pin,
    fetch_url,
    is_hidden,
    is_url,
    local_path,
    pin_hint,
)
from textclf.encoders.text import check_encoding, decode
from textclf.errors import TextclfError
from textclf.hashing import file_sha256

# Documents read from a tar ahead of their turn are kept up to this many bytes per pass.
READ_BUFFER_BYTES = 128 << 20
HIDDEN, TOP_LEVEL_FILES = "hidden", "top_level_files"  # the SourceRecord.skipped kinds
_NAMES_SHOWN = 5  # folder names listed in an error before "..."


def _known_encoding(name: str) -> str:
    try:
        return check_encoding(name)
    except TextclfError as error:  # pydantic reports a ValueError as the key's problem
        raise ValueError(str(error).removeprefix("data.encoding: ")) from None


Name = Annotated[str, Field(min_length=1)]


class SplitNames(TypedDict):
    """data.split_names: the folder names (any of each list, any case) of each split."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    train: Annotated[list[Name], Field(min_length=1)]
    validation: list[Name]
    test: list[Name]


@dataclass(frozen=True)
class Entry:
    """A file or folder of the corpus: its '/'-separated path from the corpus root."""

    path: str
    is_dir: bool
    size: int = 0


@dataclass(frozen=True)
class Document:
    split: str | None
    label: str
    path: str  # from the corpus root: the example's origin, the member to read
    key: str  # from inside the wrapping folder: the path in the content hash
    size: int


@dataclass(frozen=True)
class Layout:
    documents: list[Document]  # sorted by (split, class, path below the class)
    skipped: dict[str, int]


def _names(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(repr(name) for name in names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


def _count(number: int, what: str) -> str:
    return f"{number} {what}{'' if number == 1 else 's'}"


def _too_large(shown: str, path: str, size: int, limit: int) -> archive.ArchiveTooLarge:
    return archive.ArchiveTooLarge(
        f"{shown}: {path!r} is {size} bytes, over data.max_document_bytes={limit}; raise "
        "data.max_document_bytes, or set it to null for no limit, if this corpus is trusted"
    )


def plan(
    shown: str, entries: Iterable[Entry], split_names: Mapping[str, list[str]], max_document_bytes: int | None
) -> Layout:
    """The documents of a corpus from its entries (in any order), sorted, with what was
    skipped; raises one TextclfError, naming ``shown``, for a layout that is not one of ours."""
    aliases = {name.casefold(): split for split, names in split_names.items() for name in names}
    hidden: set[tuple[str, ...]] = set()  # the outermost hidden part of each hidden entry
    files: list[tuple[tuple[str, ...], int]] = []
    folders: set[tuple[str, ...]] = set()  # every folder, given or implied by what it holds
    for entry in entries:
        parts = tuple(entry.path.split("/"))
        at = next((index for index, part in enumerate(parts) if is_hidden(part)), None)
        if at is not None:
            hidden.add(parts[: at + 1])
            folders.update(parts[:index] for index in range(1, at + 1))
            continue
        folders.update(parts[:index] for index in range(1, len(parts)))
        if entry.is_dir:
            folders.add(parts)
        else:
            files.append((parts, entry.size))

    def subfolders(parent: tuple[str, ...]) -> set[str]:
        return {folder[-1] for folder in folders if len(folder) == len(parent) + 1 and folder[:-1] == parent}

    top = subfolders(())
    root: tuple[str, ...] = ()  # the wrapping folder, when there is one
    if len(top) == 1 and next(iter(top)).casefold() not in aliases and subfolders((next(iter(top)),)):
        root = (next(iter(top)),)
    level = subfolders(root)
    if not level:
        found = _count(sum(len(parts) == 1 for parts, _ in files), "file")
        if hidden:
            found += f", {len(hidden)} hidden" + (" entry" if len(hidden) == 1 else " entries")
        raise TextclfError(
            f"{shown}: no class folders (found {found} and no folders at its top level; "
            "expected <class>/<files>, or <split>/<class>/<files>)"
        )
    splits = {name: aliases[name.casefold()] for name in level if name.casefold() in aliases}
    if splits and len(splits) < len(level):
        raise TextclfError(
            f"{shown}: mixed layout: split folders {_names(splits)} beside class folders "
            f"{_names(level - splits.keys())} (put every class folder in a split folder, or none)"
        )
    classes: dict[tuple[str, ...], str | None]  # the class folders (path from root) and their split
    if splits:
        for split in SPLITS:
            named = [name for name, value in splits.items() if value == split]
            if len(named) > 1:
                raise TextclfError(f"{shown}: split folders {_names(named)} are all the {split} split (keep one)")
        if TRAIN not in splits.values():
            raise TextclfError(
                f"{shown}: split folders {_names(splits)} but no training folder "
                f"(one named {_names(split_names[TRAIN])}, as data.split_names.train says)"
            )
        classes = {}
        for name, split in splits.items():
            inside = subfolders((*root, name))
            if not inside:
                raise TextclfError(
                    f"{shown}: split folder {'/'.join((*root, name))!r} holds no class folders "
                    "(expected <split>/<class>/<files>)"
                )
            classes.update({(name, label): split for label in inside})
    else:
        classes = {(label,): None for label in level}
    depth = len(root) + (2 if splits else 1)  # the parts down to a class folder
    documents, top_level, used = [], 0, set()
    for parts, size in files:
        owner = parts[len(root) : depth]
        if parts[: len(root)] != root or len(parts) <= depth or owner not in classes:
            top_level += 1  # beside the wrapping folder, the split or the class folders
            continue
        path = "/".join(parts)
        if max_document_bytes is not None and size > max_document_bytes:
            raise _too_large(shown, path, size, max_document_bytes)
        used.add(owner)
        key = "/".join(parts[len(root) :])
        documents.append(Document(classes[owner], owner[-1], path, key, size))
    empty = classes.keys() - used
    if empty:
        which = "class folder {} holds" if len(empty) == 1 else "class folders {} hold"
        raise TextclfError(
            f"{shown}: {which.format(_names('/'.join((*root, *folder)) for folder in empty))} no documents "
            "(remove it, or add its files)"
        )
    order = {None: -1} | {split: index for index, split in enumerate(SPLITS)}
    documents.sort(
        key=lambda doc: (
            order[doc.split],
            doc.label,
            [archive.article_order(part) for part in doc.key.split("/")[depth - len(root) :]],
        )
    )
    for before, after in itertools.pairwise(documents):
        if before.path == after.path:
            raise TextclfError(f"{shown}: holds {before.path!r} twice (repack it with one copy)")
    skipped = {kind: number for kind, number in ((HIDDEN, len(hidden)), (TOP_LEVEL_FILES, top_level)) if number}
    return Layout(documents, skipped)


class _Corpus:
    """A corpus's files, however it is packed: its entries, and the bytes of given documents."""

    def entries(self) -> Iterator[Entry]:
        raise NotImplementedError

    def contents(self, documents: list[Document]) -> Iterator[tuple[Document, bytes]]:
        """Each of ``documents`` with its bytes, in the order given."""
        raise NotImplementedError


class _Directory(_Corpus):
    def __init__(self, shown: str, root: Path, limits: Limits) -> None:
        self.shown, self.root, self.limits = shown, root, limits

    def _error(self, path: str, error: OSError) -> TextclfError:
        return TextclfError(f"{self.shown}: cannot read {path!r} ({error.strerror or error})")

    def entries(self) -> Iterator[Entry]:
        yield from self._walk(self.root, "", {self._identity(self.root, "")})

    def _identity(self, directory: Path, path: str) -> tuple[int, int]:
        try:
            status = os.stat(directory)
        except OSError as error:
            raise self._error(path or ".", error) from error
        return status.st_dev, status.st_ino

    def _walk(self, directory: Path, prefix: str, ancestors: set[tuple[int, int]]) -> Iterator[Entry]:
        """Links are followed (a user's own folder), a link back to an enclosing folder refused."""
        try:
            with os.scandir(directory) as found:
                children = sorted(found, key=lambda child: child.name)
        except OSError as error:
            raise self._error(prefix or ".", error) from error
        for child in children:
            path = f"{prefix}{child.name}"
            if is_hidden(child.name):
                yield Entry(path, False)  # counted, never looked into
                continue
            try:
                status = os.stat(child.path)
            except OSError as error:
                raise self._error(path, error) from error
            if stat.S_ISDIR(status.st_mode):
                identity = (status.st_dev, status.st_ino)
                if identity in ancestors:
                    raise TextclfError(f"{self.shown}: {path!r} links back to a folder that holds it (remove the link)")
                yield Entry(path, True)
                yield from self._walk(Path(child.path), f"{path}/", ancestors | {identity})
            elif stat.S_ISREG(status.st_mode):
                yield Entry(path, False, status.st_size)
            else:
                raise TextclfError(f"{self.shown}: {path!r} is not a regular file or folder (a device, fifo or socket)")

    def contents(self, documents: list[Document]) -> Iterator[tuple[Document, bytes]]:
        limit = self.limits.max_document_bytes
        for document in documents:
            try:
                with open(self.root / document.path, "rb") as handle:
                    raw = handle.read() if limit is None else handle.read(limit + 1)
            except OSError as error:
                raise self._error(document.path, error) from error
            if limit is not None and len(raw) > limit:
                raise _too_large(self.shown, document.path, len(raw), limit)
            yield document, raw


class _Tar(_Corpus):
    """Read with archive.checked_members' checks: unsafe members refused, every pass bounded by
    max_archive_bytes and its stream checked to the end."""

    def __init__(self, shown: str, path: Path, limits: Limits) -> None:
        self.shown, self.path, self.limits = shown, path, limits

    def entries(self) -> Iterator[Entry]:
        with archive.checked_members(self.path, self.limits.max_archive_bytes) as members:
            for member, _ in members:
                path = posixpath.normpath(member.name)
                if path != ".":
                    yield Entry(path, member.isdir(), member.size if member.isfile() else 0)

    def contents(self, documents: list[Document]) -> Iterator[tuple[Document, bytes]]:
        """Passes over the archive; in each, a document is yielded when its turn comes and kept
        when it comes early but within the next READ_BUFFER_BYTES of the order."""
        index = {document.path: at for at, document in enumerate(documents)}
        ends = list(itertools.accumulate(document.size for document in documents))

        def window_end(start: int) -> int:  # the documents from start that fit the buffer (one at least)
            budget = READ_BUFFER_BYTES + (ends[start - 1] if start else 0)
            return max(start + 1, bisect.bisect_right(ends, budget))

        turn, kept = 0, {}
        end = window_end(0) if documents else 0
        while turn < len(documents):
            start = turn
            with archive.checked_members(self.path, self.limits.max_archive_bytes) as members:
                for member, tar in members:
                    at = index.get(posixpath.normpath(member.name)) if member.isfile() else None
                    if at is None or at < turn or at in kept or (at != turn and at >= end):
                        continue
                    raw = self._read(tar, member, documents[at])
                    if at != turn:
                        kept[at] = raw
                        continue
                    yield documents[at], raw
                    turn += 1
                    while turn in kept:
                        yield documents[turn], kept.pop(turn)
                        turn += 1
                    if turn >= end:  # nothing is kept: the next window starts at turn
                        end = window_end(turn) if turn < len(documents) else turn
                    if turn == len(documents):
                        break
            if turn == start:
                raise TextclfError(f"{self.shown}: changed while it was read (read it again)")

    def _read(self, tar: tarfile.TarFile, member: tarfile.TarInfo, document: Document) -> bytes:
        handle = tar.extractfile(member)
        assert handle is not None  # a regular file always has a payload
        raw = handle.read()
        if len(raw) != document.size:
            raise TextclfError(f"{self.shown}: changed while it was read (read it again)")
        return raw


_SYMLINK_OR_SPECIAL = (stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)
_DRIVE = re.compile(r"^[A-Za-z]:")


class _Zip(_Corpus):
    """zipfile, with archive.py's checks: no member outside the archive's root ('/', '..', a
    drive), no links or devices, no encrypted member, at most max_archive_bytes declared (a
    member's read stops at its declared size, and its CRC is checked)."""

    def __init__(self, shown: str, path: Path, limits: Limits) -> None:
        self.shown, self.path, self.limits = shown, path, limits

    def _open(self) -> zipfile.ZipFile:
        try:
            return zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise TextclfError(f"{self.shown}: corrupt or unreadable zip archive ({error})") from error

    def _refuse(self, name: str, why: str) -> TextclfError:
        return TextclfError(f"{self.shown}: refusing member {name!r}: {why}")

    def entries(self) -> Iterator[Entry]:
        total = 0
        with self._open() as packed:
            for info in packed.infolist():
                name = info.filename
                path = posixpath.normpath(name)
                if name.startswith(("/", "\\")) or _DRIVE.match(name) or path == ".." or path.startswith("../"):
                    raise self._refuse(name, "it escapes the target directory")
                if stat.S_IFMT(info.external_attr >> 16) in _SYMLINK_OR_SPECIAL:
                    raise self._refuse(name, "not a regular file or directory (a link or a device)")
                if info.flag_bits & 0x1:
                    raise self._refuse(name, "it is encrypted")
                total += info.file_size
                limit = self.limits.max_archive_bytes
                if limit is not None and total > limit:
                    raise archive.ArchiveTooLarge(
                        f"{self.shown}: decompresses to more than data.max_archive_bytes={limit} bytes; "
                        "raise data.max_archive_bytes, or set it to null for no limit, if this archive is trusted"
                    )
                if path != ".":
                    yield Entry(path, info.is_dir(), 0 if info.is_dir() else info.file_size)

    def contents(self, documents: list[Document]) -> Iterator[tuple[Document, bytes]]:
        with self._open() as packed:
            members = {posixpath.normpath(info.filename): info for info in packed.infolist() if not info.is_dir()}
            for document in documents:
                info = members.get(document.path)
                if info is None or info.file_size != document.size:
                    raise TextclfError(f"{self.shown}: changed while it was read (read it again)")
                try:
                    with packed.open(info) as handle:
                        raw = handle.read()
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as error:
                    raise TextclfError(
                        f"{self.shown}: corrupt or unreadable zip archive at {document.path!r} ({error})"
                    ) from error
                yield document, raw


def _open_corpus(shown: str, path: Path, limits: Limits) -> _Corpus:
    if path.is_dir():
        return _Directory(shown, path, limits)
    if not path.is_file():
        raise TextclfError(f"{shown}: not a folder or a regular file (a device, fifo or socket)")
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as error:
        raise TextclfError(f"{shown}: cannot read it ({error.strerror or error})") from error
    if head.startswith(archive.ZIP_MAGIC):
        return _Zip(shown, path, limits)
    if archive.looks_like_tar(head):
        return _Tar(shown, path, limits)
    raise TextclfError(
        f"{shown}: not a folder, nor a tar or zip archive (for a CSV, TSV, JSON Lines or Parquet file use data=table)"
    )


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


class Folder(DataSource):
    """One folder per class (see the module's docstring): conf/data/folder.yaml."""

    def __init__(
        self,
        path: Annotated[str, Field(min_length=1)],
        sha256: Sha256 | None,
        encoding: Annotated[str, AfterValidator(_known_encoding)],
        split_names: SplitNames,
        limits: Limits | None = None,
        downloads: Path | None = None,
    ) -> None:
        super().__init__(limits, downloads)
        self.path, self.sha256, self.encoding = path, sha256, check_encoding(encoding)
        self.split_names = {split: list(split_names.get(split) or []) for split in SPLITS}
        seen: dict[str, str] = {}
        for split, names in self.split_names.items():
            for name in names:
                other = seen.setdefault(name.casefold(), split)
                if other != split:
                    raise TextclfError(f"data.split_names: {name!r} names both the {other} and the {split} split")

    def local_inputs(self) -> list[str]:
        return [] if is_url(self.path) else [self.path]

    def _download_name(self) -> str:
        """The downloaded archive's file name in raw_dir: the URL's last part, made safe."""
        name = re.sub(r"[^A-Za-z0-9._-]", "_", posixpath.basename(unquote(urlparse(self.path).path)))
        return name if name.strip("._") else "archive"

    def _layout(self, corpus: _Corpus) -> Layout:
        return plan(self.path, corpus.entries(), self.split_names, self.limits.max_document_bytes)

    def fetch(self, raw_dir: Path, progress: bool = True) -> SourceRecord:
        """A URL is downloaded into raw_dir (data.sha256 required); a local path is only read,
        its layout checked and its documents hashed (see the module's docstring)."""
        if is_url(self.path):
            if self.sha256 is None:
                raise TextclfError(
                    f"data.sha256: required for the URL {self.path} (pin the archive's sha256: "
                    "-S data.sha256=<sha256sum of the file>)"
                )
            location = fetch_url(self, self.path, self.sha256, Path(raw_dir) / self._download_name(), progress)
            pinned = self.sha256.lower()
        else:
            location = local_path(self.path)
            pinned = None if location.is_dir() else file_sha256(location)
            if pinned is not None:
                check_pin(self.path, pinned, self.sha256)
        corpus = _open_corpus(self.path, location, self.limits)
        layout = self._layout(corpus)
        content = archive.content_hash(
            [
                archive.content_line(doc.key, hashlib.sha256(raw).hexdigest())
                for doc, raw in corpus.contents(layout.documents)
            ]
        )
        if pinned is None:
            pinned = content
            check_pin(self.path, pinned, self.sha256)
        if self.sha256 is None:
            print(pin_hint(self.path, pinned))
        return SourceRecord(content, {self.path: pinned}, layout.skipped)

    def read(self, raw_dir: Path) -> Iterator[Example]:
        if is_url(self.path):
            location = Path(raw_dir) / self._download_name()
            if not location.is_file():
                raise TextclfError(f"{location}: not found (the download of {self.path}; run the download stage first)")
        else:
            location = local_path(self.path)
        corpus = _open_corpus(self.path, location, self.limits)
        for document, raw in corpus.contents(self._layout(corpus).documents):
            text, fell_back = decode(raw, self.encoding)
            yield Example(document.split, document.label, text, document.path, fell_back)
