"""The 20 Newsgroups "bydate" archive (and any archive of that shape): one tar archive whose
members are ``<train_dir>/<group>/<message>`` and ``<test_dir>/<group>/<message>``.

Fetched from ``url`` (then ``mirrors``), verified by ``sha256``, or taken from a local copy in
$TEXTCLF_DATA_HOME (textclf.data.home); read safely from the tar stream (textclf.data.archive).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from pydantic import Field

from textclf.data.archive import content_sha256, read_corpus
from textclf.data.home import data_home, local_copy, offline_hint, take_local_copy
from textclf.data.sources.base import TEST, TRAIN, DataSource, Example, Limits, SourceRecord, fetch_url
from textclf.encoders.text import check_encoding, decode
from textclf.errors import TextclfError

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
Name = Annotated[str, Field(min_length=1)]


class UsenetArchive(DataSource):
    def __init__(
        self,
        url: Name,
        mirrors: list[str],
        sha256: Sha256,
        # The corpus's content hash (textclf.data.archive.content_line): a local copy whose files
        # hash to it is accepted though its bytes differ (null: only sha256 is accepted).
        content_sha256: Sha256 | None,
        archive_name: Name,
        train_dir: Name,
        test_dir: Name,
        encoding: Name = "utf-8",
        limits: Limits | None = None,
        downloads: Path | None = None,
    ) -> None:
        super().__init__(limits, downloads)
        self.url, self.mirrors, self.sha256, self.content_sha256 = url, list(mirrors), sha256, content_sha256
        self.archive_name, self.train_dir, self.test_dir, self.encoding = archive_name, train_dir, test_dir, encoding

    # What textclf.data.home reads of a source.
    @property
    def max_download_bytes(self) -> int | None:
        return self.limits.max_download_bytes

    @property
    def max_archive_bytes(self) -> int | None:
        return self.limits.max_archive_bytes

    def _check(self) -> None:
        check_encoding(self.encoding)
        if self.train_dir == self.test_dir:
            raise TextclfError(
                f"data.train_dir and data.test_dir are both '{self.train_dir}': the test split would be the "
                "training split (name the archive's test directory in data.test_dir)"
            )

    def fetch(self, raw_dir: Path, progress: bool = True) -> SourceRecord:
        """``raw_dir/<archive_name>``: the local copy in $TEXTCLF_DATA_HOME if it is the pinned
        corpus, else the first URL that serves it (kept in ``downloads`` for the next run)."""
        self._check()
        target, home = raw_dir / self.archive_name, data_home()
        local = local_copy(self, home)
        if local is not None:
            how = take_local_copy(self, local, target)
            if progress:
                print(f"download: {target} from {local} ({how})")
        else:
            fetch_url(self, self.url, self.sha256, target, progress, self.mirrors, hint=offline_hint(self, home))
            if progress:
                print(f"download: {target} (sha256 {self.sha256.lower()})")
        content = content_sha256(target, self.limits.max_archive_bytes)
        return SourceRecord(content_sha256=content, inputs={self.url: self.sha256.lower()})

    def read(self, raw_dir: Path) -> Iterator[Example]:
        self._check()
        messages, _ = read_corpus(
            raw_dir / self.archive_name,
            (self.train_dir, self.test_dir),
            self.limits.max_document_bytes,
            self.limits.max_archive_bytes,
        )
        split_of = {self.train_dir: TRAIN, self.test_dir: TEST}
        for message in messages:
            text, fallback = decode(message.raw, self.encoding)
            origin = f"{raw_dir / self.archive_name}: member '{message.split}/{message.group}/{message.name}'"
            yield Example(split_of[message.split], message.group, text, origin, fallback)
