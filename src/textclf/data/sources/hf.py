"""A Hugging Face dataset (conf/data/hf.yaml): a Hub id, a save_to_disk directory or data files.

    dvc exp run -S data=hf -S data.path=<Hub id | directory | files> [-S data.name=<config>]

``data.path`` is, in this order: a directory written by ``save_to_disk`` (it holds
``dataset_dict.json``, or ``state.json`` and ``dataset_info.json``), read with
``datasets.load_from_disk`` (Arrow, memory-mapped); another local directory or file, data files
(CSV, JSON Lines, Parquet; split names from the file names, as ``datasets.load_dataset`` infers
them), streamed by ``load_dataset(..., streaming=True)`` with nothing copied into the Hugging
Face cache; else a Hub id, loaded by ``load_dataset`` into the Hugging Face cache ($HF_HOME), so
later runs read it offline. Nothing is written to the raw directory.

Splits: each of ours (train, validation, test) is the first of ``data.split_names[<ours>]`` the
dataset has; its other splits ("unsupervised") are not read. A dataset with only a training
split is held out from by preprocess; one without splits (a single saved Dataset) is too (its
examples have no split). A ClassLabel column gives its names ("pos"), not its integers.

The content hash (SourceRecord.content_sha256, what ``data.sha256`` pins): for a local directory
``archive.content_hash`` over its files (hidden ones left out), for a local file its SHA-256; for
a Hub dataset ``examples_sha256`` over the examples it yields: SHA-256 over one line per example,
in read order, ``json.dumps([split, label, text], ensure_ascii=False) + "\\n"`` in UTF-8. (Its
fingerprint would not do: datasets derives it from cache paths and library versions.)
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

from textclf.data.sources.base import (
    SPLITS,
    TRAIN,
    DataSource,
    Example,
    Limits,
    SourceRecord,
    check_pin,
    is_hidden,
    pin_hint,
)
from textclf.data.sources.table import (
    BATCH_ROWS,
    check_size,
    label_names,
    label_separator_of,
    missing_columns,
    quiet_datasets,
    row_label,
    row_text,
    split_lookup,
    text_columns,
)
from textclf.errors import TextclfError, first_line

SAVED_DICT = "dataset_dict.json"  # save_to_disk of a DatasetDict
SAVED_DATASET = ("state.json", "dataset_info.json")  # ... of a Dataset
BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
OFFLINE_HINT = "save it with datasets.save_to_disk on a machine with network and set data.path to that directory"


class HuggingFaceDataset(DataSource):
    """Examples of a Hugging Face dataset; see the module docstring and conf/data/hf.yaml."""

    def __init__(
        self,
        path: str,
        name: str | None,
        revision: str | None,
        text_column: str | list[str],
        text_separator: str,
        label_column: str,
        label_separator: str | None,
        split_names: dict[str, list[str]],
        sha256: str | None,
        limits: Limits | None = None,
        downloads: Path | None = None,
    ) -> None:
        super().__init__(limits, downloads)
        self.path = str(path)
        self.name = name
        self.revision = revision
        self.text_columns = text_columns(text_column)
        self.text_separator = text_separator
        self.label_column = label_column
        self.label_separator = label_separator_of(label_separator)
        self.split_names = {
            split: [names] if isinstance(names, str) else list(names) for split, names in split_names.items()
        }
        split_lookup(self.split_names)  # only our splits, and no name listed for two of them
        self.sha256 = sha256

    # -- the download stage ------------------------------------------------------------------

    def fetch(self, raw_dir: Path, progress: bool = True) -> SourceRecord:
        local = self._local()
        if local is None:
            content = examples_sha256(self.read(raw_dir))  # loads it into the Hugging Face cache first
            shown = self.path if self.revision is None else f"{self.path}@{self.revision}"
        else:
            with ExitStack() as stack:  # its splits and columns are checked now, before preprocess
                for _, _, dataset in self._splits(local, stack):
                    self._columns(dataset)
            content = local_sha256(local)
            shown = self.path
        check_pin(shown, content, self.sha256)
        if self.sha256 is None:
            print(pin_hint(shown, content))
        return SourceRecord(content, inputs={shown: content})

    def local_inputs(self) -> list[str]:
        path = Path(self.path).expanduser()
        return [str(path)] if path.exists() else []

    # -- preprocess --------------------------------------------------------------------------

    def read(self, raw_dir: Path) -> Iterator[Example]:
        with ExitStack() as stack:
            for split, theirs, dataset in self._splits(self._local(), stack):
                names = self._columns(dataset)
                columns = [*self.text_columns, self.label_column]
                row = 0
                with quiet_datasets():
                    batches = dataset.select_columns(list(dict.fromkeys(columns))).iter(batch_size=BATCH_ROWS)
                for batch in self._reading(batches):
                    for index in range(len(batch[self.label_column])):
                        row += 1
                        where = f"{self.path} {theirs} row {row}" if theirs is not None else f"{self.path} row {row}"
                        text = row_text([batch[column][index] for column in self.text_columns], self.text_separator)
                        check_size(text, where, self.limits)
                        yield Example(split, self._label(batch[self.label_column][index], names, where), text, where)

    # -- helpers -----------------------------------------------------------------------------

    def _local(self) -> Path | None:
        """The local directory or file data.path names; None for a Hub id."""
        path = Path(self.path).expanduser()
        if path.exists():
            return path
        if self.path.startswith(("/", ".", "~")) or self.path.lower().endswith(tuple(BUILDERS)):
            raise TextclfError(f"{self.path}: no such file or directory (check data.path; a Hub id is <owner>/<name>)")
        return None

    def _open(self, local: Path | None, stack: ExitStack) -> Any:
        """A DatasetDict or IterableDatasetDict, or a Dataset (no splits)."""
        import datasets

        with quiet_datasets():
            if local is None:
                return self._load_hub()
            if local.is_dir() and ((local / SAVED_DICT).is_file() or all((local / f).is_file() for f in SAVED_DATASET)):
                self._local_only("a save_to_disk directory")
                try:
                    return datasets.load_from_disk(str(local))
                except (ValueError, OSError) as error:
                    raise TextclfError(
                        f"{self.path}: not a readable save_to_disk directory ({first_line(error)})"
                    ) from error
            if local.is_file() and local.suffix.lower() not in BUILDERS:
                raise TextclfError(
                    f"{self.path}: unknown data file extension {local.suffix!r} (supported: {', '.join(BUILDERS)}; "
                    "or a save_to_disk directory)"
                )
            self._local_only("local data files", name_allowed=local.is_dir())
            cache = stack.enter_context(tempfile.TemporaryDirectory(prefix="textclf-datasets-"))
            try:
                if local.is_dir():
                    return datasets.load_dataset(str(local), name=self.name, streaming=True, cache_dir=cache)
                builder = BUILDERS[local.suffix.lower()]
                options = {"sep": "\t"} if local.suffix.lower() == ".tsv" else {}
                return datasets.load_dataset(
                    builder, data_files={TRAIN: str(local)}, streaming=True, cache_dir=cache, **options
                )
            except (ValueError, OSError, StopIteration) as error:
                raise TextclfError(
                    f"{self.path}: not readable as a dataset ({first_line(error) if str(error) else 'no rows'}); "
                    "data.path takes data files (CSV, JSON Lines, Parquet), a save_to_disk directory or a Hub id"
                ) from error

    def _local_only(self, what: str, name_allowed: bool = False) -> None:
        if self.revision is not None:
            raise TextclfError(f"data.revision: a Hub revision, and data.path={self.path} is {what}: set it to null")
        if self.name is not None and not name_allowed:
            raise TextclfError(f"data.name: a Hub dataset's configuration, and data.path is {what}: set it to null")

    def _load_hub(self) -> Any:
        import datasets
        from datasets.exceptions import DatasetNotFoundError

        try:
            return datasets.load_dataset(self.path, name=self.name, revision=self.revision)
        except DatasetNotFoundError as error:
            raise TextclfError(
                f"data.path={self.path}: no such dataset on the Hugging Face Hub, nor a local path "
                f"({first_line(error)}); check the id, or log in (hf auth login) if it is gated or private"
            ) from error
        except ConnectionError as error:  # offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE) or no network
            raise TextclfError(
                f"data.path={self.path}: no such local path, and the Hugging Face dataset is not in the local "
                f"cache and the Hub cannot be reached (offline, or no network); {OFFLINE_HINT}"
            ) from error
        except (ValueError, OSError) as error:  # a missing or unknown configuration name, among others
            raise TextclfError(f"data.path={self.path}: cannot load it ({first_line(error)})") from error

    def _splits(self, local: Path | None, stack: ExitStack) -> Iterator[tuple[str | None, str | None, Any]]:
        """(our split, the dataset's split name, the split) for each split read, in our order."""
        opened = self._open(local, stack)
        if not isinstance(opened, Mapping):  # DatasetDict and IterableDatasetDict are dicts
            yield None, None, opened  # one Dataset: no splits
            return
        theirs = list(opened)
        chosen: dict[str, str] = {}
        for split in SPLITS:
            found = next((name for name in self.split_names.get(split, []) if name in opened), None)
            if found is None:
                continue
            if found in chosen.values():
                ours = next(key for key, value in chosen.items() if value == found)
                raise TextclfError(f"data.split_names: the split {found!r} is named for both {ours} and {split}")
            chosen[split] = found
        if TRAIN not in chosen:
            listed = ", ".join(self.split_names.get(TRAIN, [])) or "none"
            raise TextclfError(
                f"{self.path}: no training split: it has the splits {', '.join(theirs)}, and data.split_names.train "
                f"lists {listed}: add its training split's name there (data.split_names.train=[<name>])"
            )
        for split, name in chosen.items():
            yield split, name, opened[name]

    def _columns(self, dataset: Any) -> list[str] | None:
        """Checks the configured columns exist; -> the label's class names (a ClassLabel), or None."""
        import datasets

        features = dataset.features
        if features is None:  # streamed data files: the columns are those of the first rows
            with closing(self._reading(dataset.iter(batch_size=1))) as rows:
                first = next(rows, None)
            if first is None:
                raise TextclfError(f"{self.path}: no rows")
            missing_columns(self.path, [*self.text_columns, self.label_column], list(first))
            return None
        missing_columns(self.path, [*self.text_columns, self.label_column], list(features))
        feature = features[self.label_column]
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names)
        # A list of ClassLabel (a multi-label dataset's usual feature): the names of its items.
        inner = getattr(feature, "feature", None)
        if isinstance(feature, list) and len(feature) == 1:
            inner = feature[0]
        if isinstance(inner, datasets.ClassLabel):
            return list(inner.names)
        return None

    def _label(self, value: Any, names: list[str] | None, where: str) -> str | tuple[str, ...]:
        if names is None:
            return row_label(value, where, self.label_column, self.label_separator)
        if isinstance(value, (list, tuple)):  # a list of ClassLabel integers
            return label_names([self._label(item, names, where) for item in value], where, self.label_column)
        if value is None or not 0 <= value < len(names):  # -1: no label (GLUE's test splits)
            raise TextclfError(
                f"{where}: no label in column '{self.label_column}' ({value!r}; its classes are 0 to "
                f"{len(names) - 1}): use a split with labels, or fill them in"
            )
        return names[value]

    def _reading(self, batches: Iterable[dict[str, list]]) -> Iterator[dict[str, list]]:
        import pyarrow as pa

        try:
            with quiet_datasets():
                yield from batches
        except (ValueError, OSError, pa.ArrowException) as error:
            raise TextclfError(f"{self.path}: cannot read it ({first_line(error)})") from error


def examples_sha256(examples: Iterable[Example]) -> str:
    """SHA-256 over ``json.dumps([split, label, text]) + "\\n"`` per example, in order."""
    digest = hashlib.sha256()
    for example in examples:
        line = json.dumps([example.split, example.label, example.text], ensure_ascii=False) + "\n"
        digest.update(line.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def local_sha256(path: Path) -> str:
    """A file's SHA-256; a directory's content hash over its files (hidden ones left out)."""
    from textclf.data.archive import content_hash, content_line
    from textclf.hashing import file_sha256

    if path.is_file():
        return file_sha256(path)
    lines = []
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if file.is_file() and not any(is_hidden(part) for part in relative.parts):
            lines.append(content_line(relative.as_posix(), file_sha256(file)))
    return content_hash(lines)
