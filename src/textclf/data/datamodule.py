"""LightningDataModule over the pre-encoded splits: batches are built by slicing tensors."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from textclf.data.encoded import EncodedSplit, read_labels, read_vocabulary


class Batch(dict):
    """tokens (T,) int64 flat ids; offsets (B,) start of each document in tokens;
    lengths (B,) tokens per document; labels (B,) class indices."""


class BatchedSplit(Dataset):
    """Indexed by a list of document indices (from a BatchSampler): returns a whole batch."""

    def __init__(self, split: EncodedSplit, max_len: int | None) -> None:
        self.split = split
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, indices: list[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.int64)
        starts = self.split.offsets[index]
        lengths = self.split.offsets[index + 1] - starts
        if self.max_len is not None:
            lengths = lengths.clamp(max=self.max_len)
        # Gather every kept position at once: position p of document b is starts[b] + p.
        doc_of_token = torch.repeat_interleave(torch.arange(len(indices)), lengths)
        batch_offsets = torch.zeros(len(indices), dtype=torch.int64)
        torch.cumsum(lengths[:-1], dim=0, out=batch_offsets[1:])
        position = torch.arange(int(lengths.sum())) - batch_offsets[doc_of_token]
        tokens = self.split.tokens[starts[doc_of_token] + position].long()
        return Batch(tokens=tokens, offsets=batch_offsets, lengths=lengths, labels=self.split.labels[index])


class EpochBatchSampler(BatchSampler):
    """A BatchSampler that forwards ``set_epoch`` (Lightning calls it each epoch) to its
    sampler, so a DistributedSampler reshuffles every epoch."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class TextDataModule(pl.LightningDataModule):
    """Loads ``<processed>/{train,val,test}.pt`` once; test only when asked for."""

    def __init__(
        self,
        processed: str | Path,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
        max_len: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.processed = Path(processed)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.max_len = max_len
        self.seed = seed  # shuffling seed shared by all DDP ranks
        self.vocabulary = read_vocabulary(self.processed)
        self.labels = read_labels(self.processed)
        self.splits: dict[str, EncodedSplit] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def setup(self, stage: str | None = None) -> None:
        names = ("test",) if stage == "test" else ("train", "val")
        for name in names:
            if name not in self.splits:
                self.splits[name] = EncodedSplit.load(self.processed / f"{name}.pt")

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = BatchedSplit(self.splits[name], self.max_len)
        sampler: Sampler[int]
        if dist.is_available() and dist.is_initialized():
            # Each rank takes its own shard (the Trainer runs with use_distributed_sampler=False
            # because its automatic sampler cannot wrap a batch-level dataset).
            sampler = DistributedSampler(dataset, shuffle=shuffle, seed=self.seed)
        else:
            sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        return DataLoader(
            dataset,
            sampler=EpochBatchSampler(sampler, batch_size=batch_size, drop_last=False),
            batch_size=None,  # the dataset returns whole batches
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
