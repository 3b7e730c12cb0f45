"""Stage 2: the source's examples -> pre-encoded train/val/test tensors, the encoder, labels, a manifest.

    source.read() -> token ids as read -> splits (held out where the source has none)
    -> encoder.fit(training documents) -> every split mapped to the vocabulary -> written

Documents are tokenized as they are read and kept only as token ids (int32, a few bytes per
token), so the corpus is never held as Python strings. The vocabulary is learned from the
training documents that remain after the hold-outs; validation and test words outside it are
<unk>. An encoder with a vocabulary of its own (a pretrained tokenizer: ``learns_vocabulary``
is False) gives final ids as it reads, and they are written as they are. The test split's
labels are only read by evaluate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from textclf.atomic import staged_dir, write_json
from textclf.config import DATA_SECTIONS, Config, build, load_params
from textclf.data.encoded import LABELS_FILE, MANIFEST_FILE, EncodedSplit, TokenIds
from textclf.data.labels import checked_kinds, multi_hot, present
from textclf.data.sources.base import RECORD_FILE, Example, build_source
from textclf.data.splits import (
    SPLIT_CODES,
    Splits,
    class_indices,
    class_order,
    held_out_sha256,
    make_splits,
    text_digest,
)
from textclf.encoders.base import ENCODER_FILE, TextEncoder, build_encoder
from textclf.encoders.vocabulary import VocabularyEncoder
from textclf.errors import TextclfError, run_cli
from textclf.hashing import file_sha256
from textclf.resume import sweep_abandoned

# Bump when the processed layout, tokenization, document order or manifest changes (4: held_out_sha256).
FORMAT_VERSION = 4
# The manifest's data_hash hashes the processed files that are the data: every file but the
# manifest and encoder.json (the splits, labels.json, the encoder's own files: the regex
# encoder's vocab.txt, a pretrained tokenizer's directory).
# Output columns of the shipped model (serving.LABEL_COLUMN) and of `textclf.predict`
# (predict.PROBABILITY_COLUMN), beside one probability column per class.
RESERVED_CLASS_NAMES = ("label", "probability")
RESERVED_MULTI_LABEL_NAMES = ("labels",)  # a multi-label model's output column (serving.LABELS_COLUMN)
CHUNK_DOCUMENTS = 2048  # documents tokenized per task of the second process
CHUNK_TOKENS = 1 << 24  # token ids counted or mapped at a time (bounds numpy's int64 temporaries)


def read_record(raw_dir: Path) -> dict | None:
    """What the download stage recorded about the source (textclf.data.sources.base.SourceRecord)."""
    path = raw_dir / RECORD_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# --- reading: examples -> token ids --------------------------------------------------------


@dataclass
class Corpus:
    """Every document as read, compactly: (N,) arrays, and token ids in chunks (first-seen
    numbering of ``numbering``). Nothing here holds a document's text."""

    numbering: TokenIds = field(default_factory=TokenIds)
    chunks: list[np.ndarray] = field(default_factory=list)  # int32 token ids, in document order
    lengths: list[np.ndarray] = field(default_factory=list)  # int64 tokens per document, per chunk
    labels: list[str] = field(default_factory=list)  # label names, first-seen order
    label_codes: list[int] = field(default_factory=list)  # (N,) index into labels (single-label)
    # Multi-label (every example's label a tuple): (N,) each document's indices into labels.
    label_sets: list[tuple[int, ...]] = field(default_factory=list)
    multi_label: bool = False
    splits: bytearray = field(default_factory=bytearray)  # (N,) SPLIT_CODES (textclf.data.splits)
    unsplit: int = 0  # documents the source gave no split
    digests: list[bytes] = field(default_factory=list)  # (N,) 16-byte hash of each text (duplicates)
    fallbacks: int = 0  # documents decoded as Latin-1 (not valid in the source's encoding)
    empty: int = 0  # documents with no text

    def __len__(self) -> int:
        return len(self.splits)


def _tokenize_chunk(description: dict, texts: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """In a second process: ``texts`` -> (their distinct tokens in first-seen order, (T,) int32
    ids in that numbering, (N,) int64 tokens per text); Corpus renumbers them into its own.
    ``description``: the encoder's ``_target_`` and settings (what encoder.json holds)."""
    encoder = _worker_encoder(description)
    numbering = TokenIds()
    documents = [numbering(encoder.tokenize(text)) for text in texts]
    flat, lengths = _flat(documents)
    return list(numbering.index), flat, lengths


_WORKER_ENCODERS: dict[str, VocabularyEncoder] = {}


def _worker_encoder(description: dict) -> VocabularyEncoder:
    """The encoder ``description`` names, built once per process (a second one for other settings)."""
    key = json.dumps(description, sort_keys=True)
    if key not in _WORKER_ENCODERS:
        _WORKER_ENCODERS[key] = build("encoder", description)
    return _WORKER_ENCODERS[key]


def _flat(documents: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
    flat = np.empty(int(lengths.sum()), dtype=np.int32)
    position = 0
    for document, length in zip(documents, lengths.tolist()):
        flat[position : position + length] = document
        position += length
    return flat, lengths


def second_process() -> ProcessPoolExecutor | None:
    """A forked worker when a second core is there to run it. Forked, it starts in milliseconds
    and imports nothing; spawned, it would import this stage (and torch) again, which costs more
    than it saves, so without fork everything runs here."""
    if (os.cpu_count() or 1) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))


def _chunks(examples: Iterable[Example], corpus: Corpus) -> Iterator[list[str]]:
    """Records each example's split, label and hash in ``corpus``; yields the texts in chunks."""
    label_index: dict[str, int] = {}
    texts: list[str] = []
    for example in examples:
        if isinstance(example.label, tuple):  # one kind per corpus: textclf.data.labels.checked_kinds
            corpus.multi_label = True
            corpus.label_sets.append(tuple(_label_code(name, label_index, corpus) for name in example.label))
        else:
            corpus.label_codes.append(_label_code(example.label, label_index, corpus))
        corpus.splits.append(SPLIT_CODES[example.split])
        corpus.unsplit += example.split is None
        corpus.fallbacks += example.fallback
        corpus.empty += not example.text
        corpus.digests.append(text_digest(example.text))
        texts.append(example.text)
        if len(texts) == CHUNK_DOCUMENTS:
            yield texts
            texts = []
    if texts:
        yield texts


def _label_code(name: str, label_index: dict[str, int], corpus: Corpus) -> int:
    code = label_index.get(name)
    if code is None:
        code = label_index[name] = len(corpus.labels)
        corpus.labels.append(name)
    return code


def read_corpus(examples: Iterable[Example], encoder: TextEncoder, parallel: bool = True) -> Corpus:
    """Tokenizes every example as it is read. With ``parallel``, a second process tokenizes
    chunks while this one reads and tokenizes the others (the regex passes are most of the
    stage's time, reading the rest); the output is the same byte for byte however the chunks
    are shared, since the vocabulary and its ids do not depend on the order in which tokens
    were first seen. An encoder whose ids are final (``learns_vocabulary`` False) tokenizes
    each chunk here, with threads of its own (a fast tokenizer's)."""
    if not encoder.learns_vocabulary:
        return _read_final_ids(examples, encoder)
    corpus = Corpus()
    description = encoder.description()
    worker = second_process() if parallel else None
    pending: list[tuple[int, Future]] = []
    done: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def collect(future_index: int, future: Future) -> None:
        words, ids, lengths = future.result()
        done[future_index] = (corpus.numbering.renumber(words, ids).astype(np.int32), lengths)

    try:
        for index, texts in enumerate(_chunks(examples, corpus)):
            for item in [item for item in pending if item[1].done()]:
                pending.remove(item)
                collect(*item)
            # The second process gets a chunk whenever it has fewer than two to do, this one
            # tokenizes the others: when reading is slow (a big table), the worker does most of
            # the tokenizing; when the texts are all at hand (an archive read whole), half.
            if worker is not None and len(pending) < 2:
                pending.append((index, worker.submit(_tokenize_chunk, description, texts)))
            else:
                done[index] = _flat([corpus.numbering(encoder.tokenize(text)) for text in texts])
        for item in pending:
            collect(*item)
    except BrokenProcessPool as error:  # killed: out of memory, or by a signal
        raise TextclfError(
            f"the process tokenizing documents died ({error}); free memory and rerun preprocess"
        ) from error
    finally:
        if worker is not None:
            worker.shutdown(cancel_futures=True)
    for index in range(len(done)):
        ids, lengths = done.pop(index)
        corpus.chunks.append(ids)
        corpus.lengths.append(lengths)
    return corpus


def _read_final_ids(examples: Iterable[Example], encoder: TextEncoder) -> Corpus:
    """Every example's final token ids (``encoder.token_ids``); ``corpus.numbering`` stays empty."""
    corpus = Corpus()
    for texts in _chunks(examples, corpus):
        flat, lengths = _flat(encoder.token_ids(texts))
        corpus.chunks.append(flat)
        corpus.lengths.append(lengths)
    return corpus


# --- labels and splits ---------------------------------------------------------------------


def check_class_names(classes: list[str], multi_label: bool = False) -> None:
    """Class names become column names and plot labels: each must be valid UTF-8 (a tar member
    name may carry surrogate escapes), not empty, and not a reserved column name."""
    reserved = RESERVED_CLASS_NAMES + (RESERVED_MULTI_LABEL_NAMES if multi_label else ())
    for name in classes:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise TextclfError(
                f"class '{shown}': its name is not valid UTF-8 (rename the folder or fix the label)"
            ) from None
        if not name.strip():
            raise TextclfError(f"class {name!r}: an empty label (give every document a label)")
        if name in reserved:
            raise TextclfError(
                f"class '{name}': a class may not be named '{name}', which is a column of the model's output "
                "(rename the folder or the label)"
            )


def count_duplicates(corpus: Corpus, splits: Splits) -> dict[str, int]:
    """Documents with identical text: repeats within the training documents (validation
    included) and within the test split, and test documents that also occur in training
    (leakage). Reported in the manifest; the documents themselves are all kept."""
    train = [corpus.digests[i] for i in np.concatenate([splits.train, splits.val]).tolist()]
    test = [corpus.digests[i] for i in splits.test.tolist()]
    seen_in_train = set(train)
    return {
        "within_train": len(train) - len(seen_in_train),
        "within_test": len(test) - len(set(test)),
        "test_in_train": sum(digest in seen_in_train for digest in test),
    }


def check_splits(corpus: Corpus, splits: Splits, label_ids: np.ndarray, classes: list[str]) -> list[str]:
    """Refuses what would make the test score meaningless; returns the warnings to print.
    ``label_ids``: (N,) class indices, or (N, C) multi-hot labels (a multi-label corpus)."""
    multi_label = label_ids.ndim == 2
    train_classes = present(label_ids, np.concatenate([splits.train, splits.val]))
    test_classes = present(label_ids, splits.test)
    unseen = sorted(classes[c] for c in test_classes - train_classes)
    if unseen:
        raise TextclfError(f"test classes missing from the training split: {unseen} (add training documents of them)")
    if multi_label and not train_classes:
        raise TextclfError("the training documents have no label at all: a multi-label classifier needs some")
    if not multi_label and len(train_classes) < 2:
        only = classes[next(iter(train_classes))] if train_classes else "none"
        raise TextclfError(f"the training documents have a single class ({only!r}): a classifier needs at least two")
    warnings = []
    missing = sorted(classes[c] for c in train_classes - test_classes)
    if missing:
        warnings.append(f"classes with no test document (macro averages run over the others): {missing}")
    if multi_label:  # iterative stratification keeps a label too rare for every split in training
        no_val = sorted(classes[c] for c in train_classes - present(label_ids, splits.val))
        if no_val:
            warnings.append(f"labels with no validation document (their thresholds are not tuned on any): {no_val}")
        only_val = sorted(classes[c] for c in present(label_ids, splits.val) - present(label_ids, splits.train))
        if only_val:
            warnings.append(f"labels with no training document, only validation ones: {only_val}")
    if splits.how["test"] == "source" and splits.test.size:
        seen = {corpus.digests[i] for i in np.concatenate([splits.train, splits.val]).tolist()}
        if all(corpus.digests[i] in seen for i in splits.test.tolist()):
            raise TextclfError(
                f"the test split is the training split: all {splits.test.size} test documents also occur in "
                "training (point the test split at held-out documents, or leave it out to have one held out: "
                "data.test_fraction)"
            )
    return warnings


# --- writing -------------------------------------------------------------------------------


def training_counts(corpus: Corpus, flat: np.ndarray, offsets: np.ndarray, train: np.ndarray) -> np.ndarray:
    """(len(corpus.numbering.index),) int64 occurrences of each token in the training documents
    only (validation and test words are then out of vocabulary). Counted CHUNK_TOKENS at a time:
    numpy widens the ids it counts or gathers to int64, which for the whole of ``flat`` would
    be twice its size again."""
    in_train = np.zeros(len(corpus), dtype=bool)
    in_train[train] = True
    in_train_tokens = np.repeat(in_train, offsets[1:] - offsets[:-1])  # (T,) bool
    counts = np.zeros(len(corpus.numbering.index), dtype=np.int64)
    for start in range(0, flat.size, CHUNK_TOKENS):
        piece = flat[start : start + CHUNK_TOKENS]
        counts += np.bincount(piece[in_train_tokens[start : start + CHUNK_TOKENS]], minlength=counts.size)
    return counts


def encoded_split(flat: np.ndarray, offsets: np.ndarray, chosen: np.ndarray, labels: np.ndarray) -> EncodedSplit:
    """The documents ``chosen`` (ascending) as an EncodedSplit: ``flat`` (T,) int32 vocabulary ids
    of every document, ``offsets`` (N+1,) where each starts, ``labels`` (N,) class indices or
    (N, C) uint8 multi-hot labels (kept as they are)."""
    lengths = offsets[1:] - offsets[:-1]
    keep = np.zeros(len(lengths), dtype=bool)
    keep[chosen] = True
    tokens = flat[np.repeat(keep, lengths)]
    split_offsets = np.zeros(chosen.size + 1, dtype=np.int64)
    np.cumsum(lengths[chosen], out=split_offsets[1:])
    return EncodedSplit(
        tokens=torch.from_numpy(tokens),
        offsets=torch.from_numpy(split_offsets),
        labels=torch.from_numpy(labels[chosen] if labels.ndim == 2 else labels[chosen].astype(np.int64)),
    )


def multi_label_counts(labels: np.ndarray) -> dict:
    """The manifest's record of a multi-label corpus ((N, C) multi-hot ``labels``)."""
    per_document = labels.sum(axis=1)
    return {
        "multi_label": True,
        "unlabelled_documents": int((per_document == 0).sum()),  # allowed: counted, and reported
        "labels_per_document": round(float(per_document.mean()), 6),
    }


def preprocess(cfg: Config, raw_dir: Path, out_dir: Path, parallel: bool = True) -> dict:
    """Reads the source (``raw_dir``: what the download stage wrote), writes ``out_dir``
    (atomically) and returns its manifest."""
    started = time.perf_counter()
    source, encoder = build_source(cfg), build_encoder(cfg)
    record = read_record(raw_dir)
    corpus = read_corpus(checked_kinds(source.read(raw_dir), cfg.data.multi_label), encoder, parallel)
    if len(corpus) == 0:
        raise TextclfError(f"{cfg.data.corpus}: the source holds no documents")
    if corpus.multi_label:  # (N, C) uint8 multi-hot (textclf.data.labels)
        classes = class_order(corpus.labels)
        label_ids = multi_hot(corpus.labels, corpus.label_sets, classes)
    else:
        classes, label_ids = class_indices(corpus.labels, corpus.label_codes)
    check_class_names(classes, corpus.multi_label)
    splits = make_splits(np.frombuffer(bytes(corpus.splits), dtype=np.uint8), label_ids, cfg.data, classes)
    warnings = check_splits(corpus, splits, label_ids, classes)
    duplicates = count_duplicates(corpus, splits)

    flat = np.empty(sum(chunk.size for chunk in corpus.chunks), dtype=np.int32)
    position = 0
    while corpus.chunks:  # one copy of the token ids at a time, never two
        chunk = corpus.chunks.pop(0)
        flat[position : position + chunk.size] = chunk
        position += chunk.size
    offsets = np.zeros(len(corpus) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(corpus.lengths), out=offsets[1:])
    if encoder.learns_vocabulary:
        to_vocabulary = encoder.fit_numbered(corpus.numbering, training_counts(corpus, flat, offsets, splits.train))
        for start in range(0, flat.size, CHUNK_TOKENS):  # (T,) int32 vocabulary ids, in place
            flat[start : start + CHUNK_TOKENS] = to_vocabulary[flat[start : start + CHUNK_TOKENS]]
    if encoder.unordered:  # a bag of ids: each document's in ascending order (TextEncoder.unordered)
        for start, stop in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
            flat[start:stop].sort()  # in place, a view of flat
    counts, tokens = {}, {}
    with staged_dir(out_dir) as staging:
        for name, chosen in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
            split = encoded_split(flat, offsets, chosen, label_ids)  # one split in memory at a time
            split.save(staging / f"{name}.pt")
            counts[name], tokens[name] = len(split), int(split.tokens.numel())
            del split
        encoder.save(staging)  # encoder.json and its files (vocab.txt, tokenizer/): what the served model encodes with
        (staging / LABELS_FILE).write_text(json.dumps(classes, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        files = {
            path.relative_to(staging).as_posix(): file_sha256(path)
            for path in sorted(staging.rglob("*"))
            if path.is_file()
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            # What the source holds (see its SourceRecord): a re-pack of the same files writes
            # this directory byte for byte the same, so DVC reruns nothing after preprocess.
            "content_sha256": record["content_sha256"] if record else None,
            "source": record,
            "data_hash": hashlib.sha256(
                json.dumps({name: sha for name, sha in files.items() if name != ENCODER_FILE}, sort_keys=True).encode()
            ).hexdigest(),
            "num_classes": len(classes),
            "vocab_size": encoder.vocab_size,
            "counts": counts,
            "splits": splits.how,
            "held_out_sha256": held_out_sha256(
                (corpus.digests[i] for i in splits.val.tolist()), (corpus.digests[i] for i in splits.test.tolist())
            ),
            "duplicates": duplicates,
            "decode_fallbacks": corpus.fallbacks,
            "empty_documents": corpus.empty,
            "classes_missing_from_test": sorted(set(classes) - {classes[c] for c in present(label_ids, splits.test)}),
            **(multi_label_counts(label_ids) if corpus.multi_label else {}),
            "tokens": tokens,
            "files": files,
            "params": {"data": cfg.data.model_dump(mode="json", by_alias=True), "encoder": encoder.settings()},
        }
        write_json(staging / MANIFEST_FILE, manifest)
    print(f"preprocess: {len(corpus)} documents in {time.perf_counter() - started:.1f}s")
    for line in warnings:
        print(f"preprocess: warning: {line}")
    if duplicates["test_in_train"]:
        print(f"preprocess: warning: {duplicates['test_in_train']} test documents also occur in training")
    if any(duplicates.values()):
        print(f"preprocess: duplicate documents (identical text, all kept): {json.dumps(duplicates)}")
    if corpus.multi_label:
        print(
            f"preprocess: multi-label, {len(classes)} labels, {manifest['labels_per_document']:.2f} per document; "
            f"{manifest['unlabelled_documents']} documents without a label"
        )
    if corpus.fallbacks:
        print(f"preprocess: {corpus.fallbacks} documents were not valid in the source's encoding (read as Latin-1)")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)

    def stage() -> None:
        cfg = load_params(args.params, targets=DATA_SECTIONS)  # builds no model: see config.validate
        sweep_abandoned(cfg)  # runs of trainings that died: KILLED (see textclf.resume)
        manifest = preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
        print(f"preprocess: {json.dumps(manifest['counts'])}, vocabulary {manifest['vocab_size']}")

    run_cli("preprocess", stage)


if __name__ == "__main__":
    main()
