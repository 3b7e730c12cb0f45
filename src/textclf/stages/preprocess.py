"""Stage 2: archive -> pre-encoded train/val/test tensors, vocabulary, labels and a manifest.

The vocabulary is built from the training documents that remain after the validation
hold-out; the test split is encoded with it and its labels are only read by evaluate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from textclf.atomic import staged_dir, write_json
from textclf.config import DataConfig, load_params
from textclf.data.archive import Message, read_corpus
from textclf.data.encoded import (
    LABELS_FILE,
    MANIFEST_FILE,
    VOCAB_FILE,
    EncodedSplit,
    TokenIds,
    flatten_documents,
    stratified_holdout,
)
from textclf.data.text import Tokenizer, clean, decode
from textclf.errors import TextclfError, run_cli
from textclf.hashing import file_sha256
from textclf.resume import sweep_abandoned

FORMAT_VERSION = 1  # bump when the processed layout or tokenization changes
# The data.* keys that shape the processed output (dvc.yaml declares these and the limits).
PREPROCESS_PARAMS = {
    "archive_name",
    "train_dir",
    "test_dir",
    "remove",
    "lowercase",
    "token_pattern",
    "min_freq",
    "max_vocab",
    "val_fraction",
    "split_seed",
}
# Also read, but they never change the output (a run either stops or writes the same bytes),
# so they are not in the manifest nor in the processed cache's key.
PREPROCESS_LIMITS = {"max_document_bytes", "max_archive_bytes"}


def count_duplicates(messages: list[Message], train_dir: str, test_dir: str) -> dict[str, int]:
    """Documents with identical bytes: repeats within the training split (validation included)
    and within the test split, and test documents that also occur in training (leakage).
    Reported in the manifest; the documents themselves are all kept."""
    train = [m.raw for m in messages if m.split == train_dir]
    test = [m.raw for m in messages if m.split == test_dir]
    seen_in_train = set(train)
    return {
        "within_train": len(train) - len(seen_in_train),
        "within_test": len(test) - len(set(test)),
        "test_in_train": sum(raw in seen_in_train for raw in test),
    }


# Output columns of the shipped model (serving.LABEL_COLUMN) and of `textclf.predict`
# (predict.PROBABILITY_COLUMN), beside one probability column per class.
RESERVED_CLASS_NAMES = ("label", "probability")


def check_class_names(archive: Path, train_messages: list[Message]) -> None:
    """Class names (the training split's category directories) become column names and plot
    labels: each must be valid UTF-8 (tarfile decodes member names with surrogate escapes) and
    not a reserved column name. Refused here, not after a whole training."""
    for message in train_messages:
        group = message.group
        try:
            group.encode("utf-8")
        except UnicodeEncodeError:
            shown = f"{message.split}/{group}/{message.name}".encode("utf-8", "surrogateescape").decode(
                "utf-8", "backslashreplace"
            )
            raise TextclfError(
                f"{archive}: member '{shown}': its category directory name is not valid UTF-8 (rename the directory)"
            ) from None
        if group in RESERVED_CLASS_NAMES:
            raise TextclfError(
                f"{archive}: category directory '{message.split}/{group}/': a class may not be named "
                f"'{group}', which is a column of the model's output (rename the directory)"
            )


def token_ids_of_documents(
    raws: Iterable[bytes], tokenizer: Tokenizer, remove: list[str], token_ids: TokenIds
) -> list[list[int]]:
    """Raw messages -> their tokens' ids in ``token_ids`` (new tokens numbered as they come)."""
    return [token_ids(tokenizer(clean(decode(raw), remove))) for raw in raws]


def token_ids_in_own_numbering(
    raws: list[bytes], token_pattern: str, lowercase: bool, remove: list[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Tokenizes and numbers ``raws`` on their own (the share of a second process): -> (the
    distinct tokens in order of first appearance, (T,) their ids in document order, (N,)
    tokens per document). ``TokenIds.renumber`` carries the ids over to the main numbering."""
    token_ids = TokenIds()
    documents = token_ids_of_documents(raws, Tokenizer(token_pattern, lowercase), remove, token_ids)
    return list(token_ids.index), *flatten_documents(documents)


def second_process() -> ProcessPoolExecutor | None:
    """A forked worker when a second core is there to run it. Forked, it starts in milliseconds
    and imports nothing; spawned, it would import this stage (and torch) again, which costs more
    than it saves, so without fork everything runs here."""
    if (os.cpu_count() or 1) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))


def preprocess(cfg: DataConfig, archive: Path, out_dir: Path, parallel: bool = True) -> dict:
    """Writes ``out_dir`` (atomically) and returns its manifest.

    With ``parallel``, a second process tokenizes the test split while this one tokenizes the
    training split (the two regex passes are most of the stage's time); the output is the
    same byte for byte either way."""
    started = time.perf_counter()
    tokenizer = Tokenizer(cfg.token_pattern, cfg.lowercase)
    messages, content_sha256 = read_corpus(
        archive, (cfg.train_dir, cfg.test_dir), cfg.max_document_bytes, cfg.max_archive_bytes
    )
    groups = sorted({m.group for m in messages if m.split == cfg.train_dir})
    label_of = {group: i for i, group in enumerate(groups)}
    unknown = sorted({m.group for m in messages if m.split == cfg.test_dir} - set(groups))
    if unknown:
        raise TextclfError(f"{archive}: test groups missing from the training split: {unknown}")
    check_class_names(archive, [m for m in messages if m.split == cfg.train_dir])

    train_messages, test_messages = (
        [m for m in messages if m.split == split] for split in (cfg.train_dir, cfg.test_dir)
    )
    train_labels, test_labels = ([label_of[m.group] for m in chosen] for chosen in (train_messages, test_messages))
    token_ids = TokenIds()
    test_job = ([m.raw for m in test_messages], cfg.token_pattern, cfg.lowercase, list(cfg.remove))
    worker = second_process() if parallel else None
    try:
        test_numbered: Future | None = worker.submit(token_ids_in_own_numbering, *test_job) if worker else None
        duplicates = count_duplicates(messages, cfg.train_dir, cfg.test_dir)
        # Numbered first, as if alone: the test split's new tokens are renumbered after these.
        train_documents = token_ids_of_documents((m.raw for m in train_messages), tokenizer, cfg.remove, token_ids)
        test_words, worker_ids, test_lengths = (
            test_numbered.result() if test_numbered else token_ids_in_own_numbering(*test_job)
        )
    except BrokenProcessPool as error:  # killed: out of memory, or by a signal
        raise TextclfError(
            f"{archive}: the process tokenizing the test split died ({error}); free memory and rerun preprocess"
        ) from error
    finally:
        if worker:
            worker.shutdown(cancel_futures=True)
    test_ids = token_ids.renumber(test_words, worker_ids)
    train_indices, val_indices = stratified_holdout(train_labels, cfg.val_fraction, cfg.split_seed)
    if not val_indices:
        largest = max(train_labels.count(label) for label in set(train_labels))
        raise TextclfError(
            f"data.val_fraction={cfg.val_fraction} holds out no validation document from {len(train_labels)} "
            f"training documents in {len(groups)} classes (at most {largest} per class); "
            f"set data.val_fraction to at least {1 / largest:.2g}"
        )
    # From the documents left for training only: validation and test words are out of vocabulary.
    vocabulary, to_vocabulary = token_ids.vocabulary(
        (train_documents[i] for i in train_indices), cfg.min_freq, cfg.max_vocab
    )

    def encoded(documents: list[list[int]], labels: list[int], chosen: list[int]) -> EncodedSplit:
        return EncodedSplit.from_token_ids([documents[i] for i in chosen], [labels[i] for i in chosen], to_vocabulary)

    splits = {
        "train": encoded(train_documents, train_labels, train_indices),
        "val": encoded(train_documents, train_labels, val_indices),
        "test": EncodedSplit.from_flat_ids(test_ids, test_lengths, test_labels, to_vocabulary),
    }
    with staged_dir(out_dir) as staging:
        for name, split in splits.items():
            split.save(staging / f"{name}.pt")
        (staging / VOCAB_FILE).write_text("".join(f"{w}\n" for w in vocabulary), encoding="utf-8")
        (staging / LABELS_FILE).write_text(json.dumps(groups, indent=2) + "\n", encoding="utf-8")
        files = {path.name: file_sha256(path) for path in sorted(staging.iterdir()) if path.is_file()}
        manifest = {
            "format_version": FORMAT_VERSION,
            # What the archive holds, not its bytes: a re-pack of the same files (a local copy
            # from $TEXTCLF_DATA_HOME) writes this directory byte for byte the same, so DVC
            # reruns nothing after preprocess (see textclf.data.archive.content_line).
            "content_sha256": content_sha256,
            "data_hash": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
            "num_classes": len(groups),
            "vocab_size": len(vocabulary),
            "counts": {name: len(split) for name, split in splits.items()},
            "duplicates": duplicates,
            "tokens": {name: int(split.tokens.numel()) for name, split in splits.items()},
            "files": files,
            "params": cfg.model_dump(include=PREPROCESS_PARAMS),
        }
        write_json(staging / MANIFEST_FILE, manifest)
    print(f"preprocess: {len(messages)} messages in {time.perf_counter() - started:.1f}s")
    if any(duplicates.values()):
        print(f"preprocess: duplicate documents (identical bytes, all kept): {json.dumps(duplicates)}")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)

    def stage() -> None:
        cfg = load_params(args.params, check_targets=False)  # builds no model: see config.validate
        sweep_abandoned(cfg)  # runs of trainings that died: KILLED (see textclf.resume)
        archive = cfg.paths.raw / cfg.data.archive_name
        manifest = preprocess(cfg.data, archive, cfg.paths.processed)
        print(f"preprocess: {json.dumps(manifest['counts'])}, vocabulary {manifest['vocab_size']}")

    run_cli("preprocess", stage)


if __name__ == "__main__":
    main()
