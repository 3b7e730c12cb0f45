"""What every data source is: examples in, and the two calls the data stages make.

A source is built from its ``conf/data/<name>.yaml`` (``_target_`` and the constructor's own
arguments; the keys every source shares, such as ``val_fraction``, are the pipeline's). The
download stage calls ``fetch``: remote inputs (URLs, a Hub dataset) are brought into the raw
directory, local inputs (a folder, a file) are hashed where they are, and the pinned hash
(``data.sha256``), when there is one, is checked. Preprocess calls ``read``, which yields every
example once, in a stable order, holding at most one document in memory at a time.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from textclf.errors import TextclfError

if TYPE_CHECKING:
    from textclf.config import Config, DataConfig

# Split names an example may carry; None: the source does not split (preprocess holds out
# the test and validation documents, stratified and seeded).
TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
RECORD_FILE = "source.json"  # <raw>/source.json: what the download stage found (SourceRecord)


@dataclass(frozen=True)
class Example:
    split: str | None  # TRAIN, VALIDATION, TEST, or None
    # One label; or a multi-label text's labels (a list in the source, or data.label_separator
    # split it), each name once, () for none (textclf.data.labels checks a source gives one kind).
    label: str | tuple[str, ...]
    text: str
    origin: str  # where it came from, for messages: "corpus/train/a/1.txt", "reviews.csv row 12"
    # Its bytes were not valid in the source's encoding and were read as Latin-1 instead
    # (textclf.encoders.text.decode); preprocess counts these in the manifest.
    fallback: bool = False


@dataclass(frozen=True)
class Limits:
    """Bounds on what the data stages read (None: no limit); data.max_* in the config."""

    max_document_bytes: int | None = None
    max_archive_bytes: int | None = None
    max_download_bytes: int | None = None


@dataclass(frozen=True)
class SourceRecord:
    """What ``fetch`` found, written to ``<raw>/source.json`` and into the manifest.

    ``content_sha256`` identifies the data (equal hashes: the same examples); ``inputs`` maps
    each input (a path or URL, as configured) to its own hash; ``skipped`` counts what the
    source left out on purpose (hidden and system files), by kind."""

    content_sha256: str
    inputs: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"content_sha256": self.content_sha256, "inputs": self.inputs, "skipped": self.skipped}

    @classmethod
    def from_json(cls, values: dict) -> SourceRecord:
        return cls(values["content_sha256"], dict(values.get("inputs", {})), dict(values.get("skipped", {})))


class DataSource(ABC):
    """A corpus, as configured. Subclasses take their options as constructor arguments
    (annotated: the config is checked against them before any work) plus ``limits``."""

    def __init__(self, limits: Limits | None = None, downloads: Path | None = None) -> None:
        self.limits = limits or Limits()
        # Verified downloads kept across runs, by sha256 (<paths.cache>/downloads): the download
        # stage reruns when any data.* param changes, and must not fetch the same bytes again.
        self.downloads = downloads

    @abstractmethod
    def fetch(self, raw_dir: Path, progress: bool = True) -> SourceRecord:
        """The download stage: writes what ``read`` will need into ``raw_dir`` (an empty
        directory; nothing for local inputs) and returns the record of what was found.
        Raises one TextclfError for a missing input or a pinned hash that does not match."""

    @abstractmethod
    def read(self, raw_dir: Path) -> Iterator[Example]:
        """Every example, in a stable order (the same inputs always give the same sequence)."""

    def local_inputs(self) -> list[str]:
        """The local files and directories this source reads (DVC watches them; see
        hydra_plugins.textclf_resolvers). Remote inputs are pinned by their params instead."""
        return []


def fetch_url(
    source: DataSource,
    url: str,
    sha256: str,
    target: Path,
    progress: bool = True,
    mirrors: Iterable[str] = (),
    hint: str = "",
) -> Path:
    """``target`` becomes the verified bytes of ``url`` (else of the first of ``mirrors`` that
    works): taken from ``source.downloads`` when a copy with that sha256 is there, else
    downloaded (retries, limits and credentials as textclf.data.download says) and kept there.
    ``hint`` ends the error line when no URL worked."""
    from textclf.atomic import link_or_copy, staged_file
    from textclf.data.download import download
    from textclf.hashing import file_sha256

    sha256 = sha256.lower()
    target.parent.mkdir(parents=True, exist_ok=True)
    kept = source.downloads / sha256 / target.name if source.downloads is not None else None
    if kept is not None and kept.is_file() and file_sha256(kept) == sha256:
        target.unlink(missing_ok=True)
        link_or_copy(kept, target)
        return target
    download([url, *mirrors], target, sha256, progress, max_bytes=source.limits.max_download_bytes, hint=hint)
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        with staged_file(kept) as handle, open(target, "rb") as downloaded:
            while chunk := downloaded.read(1 << 20):
                handle.write(chunk)
    return target


def build_source(cfg: Config, downloads: Path | None = None) -> DataSource:
    """The source ``cfg.data`` names, with its limits (and ``downloads``: see DataSource)."""
    return source_of(cfg.data, downloads)


def source_of(data: DataConfig, downloads: Path | None = None) -> DataSource:
    """The source the data section ``data`` names (a run's, read back from its config.yaml)."""
    from textclf.config import build

    limits = Limits(data.max_document_bytes, data.max_archive_bytes, data.max_download_bytes)
    return build("data", data.source_options, limits=limits, downloads=downloads)


def is_url(location: str) -> bool:
    """http(s):// and file:// locations (anything else is a local path)."""
    return urlparse(location).scheme.lower() in ("http", "https", "file")


def local_path(location: str) -> Path:
    """A local path as given (``~`` expanded), checked to exist: one line naming it otherwise."""
    path = Path(location).expanduser()
    if not path.exists():
        raise TextclfError(f"{location}: no such file or directory (check data.path, or the file's key in data.*)")
    return path


def check_pin(shown: str, actual: str, pinned: str | None) -> None:
    """``pinned`` (data.sha256, optional for local inputs) must be ``actual`` when given."""
    if pinned is not None and pinned.lower() != actual:
        raise TextclfError(
            f"{shown}: its sha256 is {actual}, not data.sha256={pinned.lower()} "
            "(the data changed: pin the new hash with -S data.sha256=<it>, or restore the data)"
        )


def pin_hint(shown: str, actual: str) -> str:
    """The line printed for an unpinned local input: its hash and how to pin it."""
    return f"download: {shown}: sha256 {actual} (pin it with -S data.sha256={actual})"


def combined_sha256(hashes: Iterable[tuple[str, str]]) -> str:
    """One hash for several named inputs: SHA-256 over ``<hash>  <name>\\0`` sorted by name."""
    digest = hashlib.sha256()
    for name, value in sorted(hashes):
        digest.update(f"{value}  {name}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def is_hidden(name: str) -> bool:
    """Hidden and system files a corpus folder should not count as documents."""
    return name.startswith(".") or name in SYSTEM_FILES


SYSTEM_FILES = frozenset({"Thumbs.db", "desktop.ini", "Desktop.ini", "__MACOSX", "Icon\r"})


def relative_parts(path: str) -> list[str]:
    """'a/b/c' -> ['a', 'b', 'c'] with '.' and empty parts dropped (os.sep too)."""
    return [part for part in path.replace(os.sep, "/").split("/") if part not in ("", ".")]
