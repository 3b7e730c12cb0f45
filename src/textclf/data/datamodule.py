"""LightningDataModule over the pre-encoded splits: batches are built by slicing tensors."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    Sampler,
)

from textclf.data.encoded import EncodedSplit, read_labels, read_manifest


class Batch(dict):
    """tokens (T,) int64 flat ids; offsets (B,) start of each document in tokens;
    lengths (B,) tokens per document; labels (B,) class indices, or (B, C) uint8 multi-hot
    labels of a multi-label corpus. Or, where the model's
    document vectors were computed once (a frozen encoder: models/embeddings.py), features
    (B, H) and labels (B,)."""


def tokens_kept(model: Mapping[str, Any]) -> int | None:
    """Tokens kept of each document for the model section ``model`` (conf/model, or a
    checkpoint's), wherever the model runs: training, evaluate, the shipped model, predict.
    Its max_len (None: the whole document), times max_chunks for a model that reads a
    document as up to that many windows of max_len tokens (model=hf)."""
    max_len = model.get("max_len")
    if max_len is None:
        return None
    return max_len * model.get("max_chunks", 1)


def clip_documents(
    tokens: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, max_len: int | None
) -> dict[str, torch.Tensor]:
    """The documents at ``starts`` (B,) with ``lengths`` (B,) in the flat ``tokens`` (T,), each
    cut to its first ``max_len`` tokens (whole when None), as a batch: tokens (T',) int64,
    offsets (B,), lengths (B,). Used wherever the model runs (training, evaluate, the shipped
    model), so a document is clipped the same way in each."""
    if max_len is not None:
        lengths = lengths.clamp(max=max_len)
    # Gather every kept position at once: position p of document b is starts[b] + p.
    doc_of_token = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    batch_offsets = torch.zeros(lengths.numel(), dtype=torch.int64)
    torch.cumsum(lengths[:-1], dim=0, out=batch_offsets[1:])
    position = torch.arange(int(lengths.sum())) - batch_offsets[doc_of_token]
    kept = tokens[starts[doc_of_token] + position].long()
    return {"tokens": kept, "offsets": batch_offsets, "lengths": lengths}


class BatchedSplit(Dataset):
    """Indexed by a list of document indices (from a BatchSampler): returns a whole batch.

    With ``features`` (N, H), one row per document of the split, the batch carries its rows
    in place of the tokens."""

    def __init__(self, split: EncodedSplit, max_len: int | None, features: torch.Tensor | None = None) -> None:
        self.split = split
        self.max_len = max_len
        self.features = features

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, indices: list[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.int64)
        if self.features is not None:
            return Batch(features=self.features[index], labels=self.split.labels[index])
        starts = self.split.offsets[index]
        lengths = self.split.offsets[index + 1] - starts
        batch = clip_documents(self.split.tokens, starts, lengths, self.max_len)
        return Batch(**batch, labels=self.split.labels[index])


class EpochBatchSampler(BatchSampler):
    """Batches of document indices, optionally grouped by length.

    With ``lengths`` and ``bucket_batches``, each run of ``batch_size * bucket_batches``
    sampled indices is sorted by document length before it is cut into batches, and the batches
    are then shuffled: sequence models pad each batch to its longest document, so similar
    lengths waste less compute. ``set_epoch`` (Lightning calls it each epoch) reaches the
    sampler, so a DistributedSampler reshuffles, and reseeds the batch order.
    """

    def __init__(
        self,
        sampler: Sampler[int],
        batch_size: int,
        lengths: torch.Tensor | None = None,
        bucket_batches: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size=batch_size, drop_last=False)
        self.lengths = lengths
        self.bucket_batches = bucket_batches
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        if self.lengths is None or self.bucket_batches is None:
            yield from super().__iter__()
            return
        order = torch.as_tensor(list(self.sampler), dtype=torch.int64)
        bucket = self.batch_size * self.bucket_batches
        batches = []
        for start in range(0, order.numel(), bucket):
            chunk = order[start : start + bucket]
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            batches.extend(chunk[i : i + self.batch_size].tolist() for i in range(0, chunk.numel(), self.batch_size))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        for index in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[index]


class TextDataModule(pl.LightningDataModule):
    """Loads ``<processed>/{train,val,test}.pt`` once; test only when asked for."""

    def __init__(
        self,
        processed: str | Path,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
        max_len: int | None = None,  # tokens kept per document (tokens_kept)
        seed: int = 0,
        length_buckets: int | None = None,
        embeddings_cache: Path | None = None,
    ) -> None:
        super().__init__()
        self.processed = Path(processed)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.max_len = max_len
        self.seed = seed  # shuffling seed shared by all DDP ranks
        self.length_buckets = length_buckets  # batches per length-sorted bucket (training only)
        self.embeddings_cache = embeddings_cache  # where features are kept across trainings (None: not kept)
        # Rows of the embedding table the ids need: the encoder's vocabulary, as preprocess recorded it.
        manifest = read_manifest(self.processed)
        self.vocab_size: int = manifest["vocab_size"]
        self.labels = read_labels(self.processed)
        # Several labels per document ((N, C) multi-hot labels; textclf.data.labels).
        self.multi_label: bool = bool(manifest.get("multi_label", False))
        self.splits: dict[str, EncodedSplit] = {}
        # (N, H) per split: the model's document vectors, computed once (models/embeddings.py),
        # which that split's batches then carry in place of the tokens.
        self.features: dict[str, torch.Tensor] = {}

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def setup(self, stage: str | None = None) -> None:
        # Lightning's stage names: test and validate need one split (evaluate calibrates on val).
        names = {"test": ("test",), "validate": ("val",)}.get(stage or "fit", ("train", "val"))
        for name in names:
            if name not in self.splits:
                self.splits[name] = EncodedSplit.load(self.processed / f"{name}.pt")

    def _loader(self, name: str, batch_size: int, shuffle: bool, bucket_batches: int | None = None) -> DataLoader:
        dataset = BatchedSplit(self.splits[name], self.max_len, self.features.get(name))
        # Each rank takes its own shard (the Trainer runs with use_distributed_sampler=False
        # because its automatic sampler cannot wrap a batch-level dataset). In one process the
        # "shard" is everything. Either way the order is a function of (seed, epoch) alone,
        # never of the global RNG, so a run resumed at an epoch boundary sees the same batches.
        if dist.is_available() and dist.is_initialized():
            sampler: Sampler[int] = DistributedSampler(dataset, shuffle=shuffle, seed=self.seed)
        else:
            sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=self.seed)
        return DataLoader(
            dataset,
            sampler=EpochBatchSampler(
                sampler,
                batch_size=batch_size,
                lengths=dataset.split.lengths if bucket_batches is not None else None,
                bucket_batches=bucket_batches,
                seed=self.seed,
            ),
            batch_size=None,  # the dataset returns whole batches
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # Each iterator draws its workers' base seed from this generator, not from torch's
            # global one: Lightning makes the first epoch's iterator before the epoch's seed is
            # set (EpochSeed) and the others after, but a resumed run's first after, so a draw
            # from the global generator would shift a resumed epoch's dropout masks.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True, bucket_batches=self.length_buckets)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
