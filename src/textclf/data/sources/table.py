"""A table: CSV, TSV, JSON Lines or Parquet files, one row per document (conf/data/table.yaml).

    dvc exp run -S data=table -S data.train=reviews.csv -S data.text_column=review -S data.label_column=stars

``data.train`` is required; ``data.validation`` and ``data.test`` are files of their own, or
``data.split_column`` names each row's split in one file (its values as in ``data.split_names``);
what is not given is held out by preprocess. Each is a local path or a URL.

Reading streams, in file order, a batch of rows at a time: CSV and TSV (a CSV with tabs) and
JSON Lines through Hugging Face datasets' streaming builders (pandas and pyarrow.json underneath),
Parquet through pyarrow's ParquetFile batches over a buffered stream (datasets' Parquet reader
decodes a whole row group at once, and a 1,000,000-row file written by pandas is one row group).
Nothing is copied into the Hugging Face cache: the builders' lock files go to a temporary
directory. A CSV's bytes are read as Latin-1 (one character per byte, so the parser never fails
on them) and each value is then decoded with textclf.encoders.text.decode: UTF-8, else Latin-1
for that document only, counted by preprocess (Example.fallback). JSON Lines and Parquet hold
UTF-8 by definition.

Pinning (``data.sha256``): one file is pinned by its own SHA-256 (``sha256sum reviews.csv``);
several by ``combined_sha256`` over (role, file sha256): SHA-256 over ``<sha256>  <role>\\0`` for
each of train, validation, test given, sorted by role. That is also the record's content hash,
printed by the download stage with the line to pin it. A URL must be pinned, and a download is
checked before it is kept, so with several files and any of them a URL, ``data.sha256`` is a
mapping of each file's own hash: ``data.sha256={train: <sha256>, test: <sha256>}`` (accepted
for local files too).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from textclf.data.sources.base import (
    SPLITS,
    TEST,
    TRAIN,
    VALIDATION,
    DataSource,
    Example,
    Limits,
    SourceRecord,
    check_pin,
    combined_sha256,
    fetch_url,
    is_url,
    local_path,
    pin_hint,
)
from textclf.errors import TextclfError, first_line

FORMATS = ("csv", "tsv", "jsonl", "parquet")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
BATCH_ROWS = 1000  # rows converted to Python at a time
PARQUET_BUFFER_BYTES = 1 << 20  # the buffered stream a Parquet column chunk is read through
# What to do when a file does not parse, by format.
READ_HINTS = {
    "csv": "check its quoting (a field with a comma, quote or newline must be in double quotes) and delimiter",
    "tsv": "check its quoting (a field with a tab, quote or newline must be in double quotes)",
    "jsonl": "it must hold one JSON object per line, in UTF-8",
    "parquet": "write it again (e.g. pandas.DataFrame.to_parquet), or set data.format if it is not Parquet",
}


class Table(DataSource):
    """Rows of one or more table files; see the module docstring and conf/data/table.yaml."""

    def __init__(
        self,
        train: str,
        validation: str | None,
        test: str | None,
        format: Literal["csv", "tsv", "jsonl", "parquet"] | None,  # noqa: A002 - the config key
        text_column: str | list[str],
        text_separator: str,
        label_column: str,
        label_separator: str | None,
        split_column: str | None,
        split_names: dict[str, list[str]],
        sha256: str | dict[str, str] | None,
        limits: Limits | None = None,
        downloads: Path | None = None,
    ) -> None:
        super().__init__(limits, downloads)
        if format is not None and format not in FORMATS:
            raise TextclfError(f"data.format: unknown format {format!r} (supported: {', '.join(FORMATS)})")
        given = {TRAIN: train, VALIDATION: validation, TEST: test}
        self.files = {role: str(location) for role, location in given.items() if location is not None}
        if split_column is not None and len(self.files) > 1:
            given = ", ".join(f"data.{role}" for role in self.files if role != TRAIN)
            raise TextclfError(
                f"data.split_column={split_column} and {given} both say which rows are held out: use one of them"
            )
        self.format = format
        self.text_columns = text_columns(text_column)
        self.text_separator = text_separator
        self.label_column = label_column
        self.label_separator = label_separator_of(label_separator)
        self.split_column = split_column
        self.split_names = {
            split: [names] if isinstance(names, str) else list(names) for split, names in split_names.items()
        }
        self.split_of = split_lookup(self.split_names)
        if isinstance(sha256, Mapping):
            unknown = sorted(set(sha256) - set(self.files))
            if unknown:
                raise TextclfError(
                    f"data.sha256: {', '.join(unknown)} is not a file of this table "
                    f"(its files: {', '.join(self.files)})"
                )
        self.sha256 = sha256

    # -- the download stage ------------------------------------------------------------------

    def fetch(self, raw_dir: Path, progress: bool = True) -> SourceRecord:
        self._check_distinct()
        for location in self.files.values():  # every file is checked before any download
            if not is_url(location):
                self._local(location)
        formats = {role: self._format(location) for role, location in self.files.items()}
        pins = self._pins()
        hashes: dict[str, str] = {}
        for role, location in self.files.items():
            if is_url(location):
                fetch_url(self, location, pins[role], self._copy(raw_dir, role, location), progress)
                hashes[role] = pins[role].lower()
            else:
                from textclf.hashing import file_sha256

                hashes[role] = file_sha256(self._local(location))
                check_pin(location, hashes[role], pins.get(role))
            # The columns are checked now, so a wrong data.text_column fails before preprocess.
            with closing(self._batches(self._file(raw_dir, role, location), location, formats[role])) as batches:
                next(batches, None)
        shown = self._shown()
        content = hashes[TRAIN] if len(hashes) == 1 else combined_sha256(hashes.items())
        if isinstance(self.sha256, str) and len(hashes) > 1:  # one file's pin was checked above
            check_pin(shown, content, self.sha256)
        elif self.sha256 is None:
            print(pin_hint(shown, content))
        return SourceRecord(content, inputs={self.files[role]: digest for role, digest in hashes.items()})

    def local_inputs(self) -> list[str]:
        return [str(Path(location).expanduser()) for location in self.files.values() if not is_url(location)]

    # -- preprocess --------------------------------------------------------------------------

    def read(self, raw_dir: Path) -> Iterator[Example]:
        self._check_distinct()
        for role, location in self.files.items():
            file = self._file(raw_dir, role, location)
            fmt = self._format(location)
            # Only the training file given: the table does not split (preprocess holds out).
            fixed = None if len(self.files) == 1 else role
            row = 0
            for batch in self._batches(file, location, fmt):
                fallbacks = batch.pop(FALLBACK_KEY, None)
                count = len(batch[self.label_column])
                for index in range(count):
                    row += 1
                    where = f"{location} row {row}"
                    text = row_text([batch[column][index] for column in self.text_columns], self.text_separator)
                    check_size(text, where, self.limits)
                    label = row_label(batch[self.label_column][index], where, self.label_column, self.label_separator)
                    split = fixed if self.split_column is None else self._split(batch[self.split_column][index], where)
                    fallback = bool(fallbacks[index]) if fallbacks is not None else False
                    yield Example(split, label, text, where, fallback)

    # -- helpers -----------------------------------------------------------------------------

    def _shown(self) -> str:
        if len(self.files) == 1:
            return self.files[TRAIN]
        return ", ".join(f"{role}={location}" for role, location in self.files.items())

    def _pins(self) -> dict[str, str | None]:
        """Each file's own pinned hash, where data.sha256 gives one (see the module docstring)."""
        urls = [role for role, location in self.files.items() if is_url(location)]
        if isinstance(self.sha256, Mapping):
            missing = [role for role in urls if role not in self.sha256]
            if missing:
                raise TextclfError(
                    f"data.sha256: no hash for {', '.join(f'data.{role}' for role in missing)} "
                    f"({self.files[missing[0]]}), a URL: add it (sha256sum <file>)"
                )
            return {role: self.sha256.get(role) for role in self.files}
        if len(self.files) == 1:
            if urls and self.sha256 is None:
                raise TextclfError(
                    f"data.sha256: required for a URL ({self.files[TRAIN]}): set it to the file's SHA-256 "
                    "(sha256sum <file>), which the download is checked against"
                )
            return {TRAIN: self.sha256}
        if urls:
            example = ", ".join(f"{role}: <sha256>" for role in self.files)
            raise TextclfError(
                f"data.sha256: {', '.join(f'data.{role}' for role in urls)} is a URL, so each file needs "
                f"its own hash, which its download is checked against: data.sha256={{{example}}}"
            )
        return dict.fromkeys(self.files)

    def _check_distinct(self) -> None:
        """data.validation and data.test must not be the training file (nor each other)."""
        seen: dict[str, str] = {}
        for role, location in self.files.items():
            key = location if is_url(location) else str(Path(location).expanduser().resolve())
            if key in seen:
                what = "the training file" if seen[key] == TRAIN else f"data.{seen[key]}'s file"
                raise TextclfError(
                    f"data.{role} is {what} ({location}): give it a file of its own, or set it to null "
                    "to have its documents held out of the training file"
                )
            seen[key] = role

    def _format(self, location: str) -> str:
        if self.format is not None:
            return self.format
        name = unquote(urlparse(location).path) if is_url(location) else location
        extension = Path(name).suffix.lower()
        if extension not in EXTENSIONS:
            raise TextclfError(
                f"{location}: unknown table extension {extension or '(none)'!r} (supported: "
                f"{', '.join(EXTENSIONS)}); rename it, or set data.format to one of {', '.join(FORMATS)}"
            )
        return EXTENSIONS[extension]

    @staticmethod
    def _copy(raw_dir: Path, role: str, location: str) -> Path:
        """Where a URL's file is kept in raw_dir: <raw>/<role>/<its name>."""
        name = Path(unquote(urlparse(location).path)).name or "table"
        return raw_dir / role / name

    def _file(self, raw_dir: Path, role: str, location: str) -> Path:
        return self._copy(raw_dir, role, location) if is_url(location) else self._local(location)

    @staticmethod
    def _local(location: str) -> Path:
        path = local_path(location)
        if path.is_dir():
            raise TextclfError(
                f"{location}: is a directory; a table is one file (CSV, TSV, JSON Lines or Parquet); "
                "for a folder per class use data=folder"
            )
        return path

    def _split(self, value: Any, where: str) -> str:
        name = "" if value is None else str(value)
        if name not in self.split_of:
            known = "; ".join(f"{split}: {', '.join(names)}" for split, names in self.split_names.items())
            raise TextclfError(
                f"{where}: data.split_column '{self.split_column}' is {name!r}, not one of data.split_names "
                f"({known}): fix the row, or add the value to data.split_names"
            )
        return self.split_of[name]

    def _needed(self) -> list[str]:
        columns = [*self.text_columns, self.label_column]
        if self.split_column is not None:
            columns.append(self.split_column)
        return list(dict.fromkeys(columns))

    def _batches(self, file: Path, shown: str, fmt: str) -> Iterator[dict[str, list]]:
        """The needed columns, BATCH_ROWS rows at a time (a CSV's with FALLBACK_KEY too); one
        TextclfError naming the file for what does not parse, is empty or lacks a column."""
        if file.stat().st_size == 0:
            raise TextclfError(f"{shown}: empty file (no rows); {EMPTY_HINTS[fmt]}")
        needed = self._needed()
        if fmt == "parquet":
            batches = _parquet_batches(file, shown, needed)
        elif fmt in ("csv", "tsv"):
            batches = _csv_batches(file, shown, needed, "\t" if fmt == "tsv" else ",")
        else:
            batches = _json_batches(file, shown, needed)
        rows = 0
        for batch in _reading(batches, shown, fmt):
            rows += len(batch[needed[0]])
            yield batch
        if rows == 0:
            raise TextclfError(f"{shown}: no rows (a header or schema only); {EMPTY_HINTS[fmt]}")


FALLBACK_KEY = "\0fallback"  # a CSV batch's per-row flag: a value was not UTF-8 (read as Latin-1)
EMPTY_HINTS = {
    "csv": "a CSV needs a header line and one row per document",
    "tsv": "a TSV needs a header line and one row per document",
    "jsonl": "a JSON Lines file needs one JSON object per document, one per line",
    "parquet": "a Parquet file needs one row per document",
}


def text_columns(text_column: str | Sequence[str]) -> list[str]:
    """data.text_column: one name or a non-empty list of names."""
    columns = [text_column] if isinstance(text_column, str) else list(text_column)
    if not columns or not all(isinstance(column, str) and column for column in columns):
        raise TextclfError(f"data.text_column: a column name or a list of them (got {text_column!r})")
    return columns


def split_lookup(split_names: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """data.split_names ({train: [...], validation: [...], test: [...]}) -> {name: our split}."""
    lookup: dict[str, str] = {}
    for split, names in split_names.items():
        if split not in SPLITS:
            raise TextclfError(f"data.split_names.{split}: not a split (the splits are {', '.join(SPLITS)})")
        for name in names:
            if lookup.get(str(name), split) != split:
                raise TextclfError(
                    f"data.split_names: {name!r} is listed for both {lookup[str(name)]} and {split}: keep one"
                )
            lookup[str(name)] = split
    return lookup


def row_text(values: Sequence[Any], separator: str) -> str:
    """The text columns' values joined (a null is the empty string: a row without text is kept)."""
    parts = ["" if value is None else value if isinstance(value, str) else str(value) for value in values]
    return parts[0] if len(parts) == 1 else separator.join(parts)


def row_label(value: Any, where: str, column: str, separator: str | None = None) -> str | tuple[str, ...]:
    """A label as a string (an integer 3 is "3"); a list of labels (a JSON or Parquet list, or a
    value ``separator`` splits: data.label_separator) as a tuple of names, () for none (a
    multi-label text may have no label). One line for a missing label or an empty name."""
    if isinstance(value, (list, tuple)):
        return label_names(list(value), where, column)
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    label = "" if missing else value if isinstance(value, str) else str(value)
    if separator is not None:
        return label_names(label.split(separator), where, column) if label.strip() else ()
    if label.strip() == "":
        raise TextclfError(f"{where}: no label in column '{column}' (every row needs one: fill it in, or drop the row)")
    return label


def label_names(values: list[Any], where: str, column: str) -> tuple[str, ...]:
    """A row's label list -> its names as strings (stripped, each once, in order); one line
    for an empty or missing name."""
    names: dict[str, None] = {}
    for value in values:
        name = "" if value is None else (value if isinstance(value, str) else str(value)).strip()
        if not name:
            raise TextclfError(
                f"{where}: an empty label name in the label list {values!r} of column '{column}' "
                "(remove it, or name the label)"
            )
        names[name] = None
    return tuple(names)


def label_separator_of(separator: str | None) -> str | None:
    """data.label_separator: null, or a non-empty string that is not whitespace."""
    if separator is not None and (not isinstance(separator, str) or not separator.strip()):
        raise TextclfError(
            f"data.label_separator: {separator!r} cannot separate labels (a character such as ',' or '|', or null)"
        )
    return separator


def check_size(text: str, where: str, limits: Limits) -> None:
    limit = limits.max_document_bytes
    if limit is None or len(text) * 4 <= limit:  # UTF-8 takes at most 4 bytes per character
        return
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise TextclfError(
            f"{where}: its text is {size} bytes, more than data.max_document_bytes={limit}; raise it, "
            "or set it to null for no limit, if this table is trusted"
        )


def missing_columns(shown: str, needed: Sequence[str], existing: Sequence[str]) -> None:
    """One line naming the configured columns ``existing`` lacks, and the ones it has."""
    missing = [column for column in needed if column not in existing]
    if missing:
        raise TextclfError(
            f"{shown}: no column {', '.join(repr(column) for column in missing)} (its columns: "
            f"{', '.join(map(str, existing)) or 'none'}); set data.text_column and data.label_column to its names"
        )


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """datasets logs a reader's error itself before raising it; the error is reported as one line."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _reading(batches: Iterator[dict[str, list]], shown: str, fmt: str) -> Iterator[dict[str, list]]:
    """``batches`` with what the readers raise for a file that does not parse as one line."""
    import pyarrow as pa

    try:
        with quiet_datasets():
            yield from batches
    except (ValueError, OSError, pa.ArrowException) as error:  # pandas', pyarrow's, datasets' errors
        if isinstance(error, UnicodeError):
            problem = f"not valid UTF-8 ({first_line(error)})"
        else:
            problem = f"not readable as {'JSON Lines' if fmt == 'jsonl' else fmt.upper()} ({first_line(error)})"
        raise TextclfError(f"{shown}: {problem}; {READ_HINTS[fmt]}") from error


def _parquet_batches(file: Path, shown: str, needed: list[str]) -> Iterator[dict[str, list]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES)
    except (pa.ArrowException, OSError) as error:
        raise TextclfError(
            f"{shown}: not a readable Parquet file ({first_line(error)}); {READ_HINTS['parquet']}"
        ) from error
    with parquet:
        missing_columns(shown, needed, parquet.schema_arrow.names)
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=needed):
            yield batch.to_pydict()


def _csv_batches(file: Path, shown: str, needed: list[str], delimiter: str) -> Iterator[dict[str, list]]:
    import pandas as pd
    from datasets import Features, Value, load_dataset

    from textclf.encoders.text import decode

    try:  # the header only: the column names, before the rows are read
        header = pd.read_csv(file, sep=delimiter, nrows=0, encoding="latin-1").columns
    except pd.errors.EmptyDataError:
        raise TextclfError(f"{shown}: empty file (no header, no rows); {EMPTY_HINTS['csv']}") from None
    raw_names = {}  # a column's name as read (Latin-1) -> as written (UTF-8, without a byte order mark)
    for position, raw in enumerate(map(str, header)):
        name = decode(raw.encode("latin-1"))[0]
        raw_names[name.lstrip("\ufeff") if position == 0 else name] = raw
    missing_columns(shown, needed, list(raw_names))
    columns = [raw_names[name] for name in needed]
    with tempfile.TemporaryDirectory(prefix="textclf-datasets-") as cache:
        rows = load_dataset(
            "csv",
            data_files=str(file),
            split="train",
            streaming=True,
            cache_dir=cache,
            sep=delimiter,
            encoding="latin-1",
            usecols=columns,
            features=Features({column: Value("string") for column in columns}),
            keep_default_na=False,  # values as written: "", "NA" and "null" are strings
            na_filter=False,
        )
        for raw_batch in rows.iter(batch_size=BATCH_ROWS):
            batch: dict[str, list] = {}
            fallbacks = [False] * len(raw_batch[columns[0]])
            for name, raw in zip(needed, columns):
                values = []
                for index, value in enumerate(raw_batch[raw]):
                    text, fell_back = decode(value.encode("latin-1"))
                    fallbacks[index] = fallbacks[index] or fell_back
                    values.append(text)
                batch[name] = values
            batch[FALLBACK_KEY] = fallbacks
            yield batch


def _json_batches(file: Path, shown: str, needed: list[str]) -> Iterator[dict[str, list]]:
    from datasets import load_dataset

    with tempfile.TemporaryDirectory(prefix="textclf-datasets-") as cache:
        try:
            rows = load_dataset("json", data_files=str(file), split="train", streaming=True, cache_dir=cache)
        except StopIteration:  # datasets found no row to infer the columns from
            raise TextclfError(f"{shown}: no rows; {EMPTY_HINTS['jsonl']}") from None
        checked = False
        for batch in rows.iter(batch_size=BATCH_ROWS):
            if not checked:
                missing_columns(shown, needed, list(batch))
                checked = True
            yield {column: batch[column] for column in needed}
