"""A frozen encoder's document vectors, computed once per training (model.cache_embeddings).

With model.freeze_encoder=true only the head trains: the encoder, frozen and in eval mode (no
dropout), is a fixed function of a document's tokens, and encoding every batch of every epoch
would repeat the same forward passes. ``attach_embeddings`` (called by TextClassifier.setup)
embeds the train and val splits once before fit starts (on the training device, under the
Trainer's precision, without gradients), and the data module's batches of those splits then
carry their rows as ``features`` (B, H), which the backbone reads in place of the tokens
(models/hf.py): neither the training nor the validation steps run the encoder. evaluate,
predict and the shipped model run the whole model on tokens, as ever.

The train stage keeps the vectors in ``<paths.cache>/embeddings/<key>-<split>.pt`` (the data
module's ``embeddings_cache``), the key hashing all that determines them: the processed data
(its hash), the encoder's weights (their bytes) and architecture, max_len, max_chunks and
pooling, the device type, the precision and the library versions. A sweep over the head's
settings (optimizer.lr, model.dropout, the seed) embeds once, a resumed training finds them,
and any change to these embeds afresh. Under DDP every rank computes (or reads) the whole of
each split, which its shards of the coming epochs index into; rank 0 writes the files.
"""

from __future__ import annotations

import hashlib
import json

import lightning.pytorch as pl
import torch
from torch import nn

from textclf.atomic import staged_file
from textclf.data.datamodule import BatchedSplit, TextDataModule
from textclf.data.encoded import EncodedSplit, read_manifest

EMBEDDINGS_DIR = "embeddings"  # under paths.cache
SPLITS = ("train", "val")  # what fit reads; the test split is evaluate's, on tokens


@torch.no_grad()
def embed_split(backbone: nn.Module, split: EncodedSplit, max_len: int | None, batch_size: int) -> torch.Tensor:
    """-> (N, H) float32 on the CPU: ``backbone.embed`` of each document of ``split``, in the
    split's order, cut to ``max_len`` tokens as the data module cuts them. The documents go
    in batches of ``batch_size`` sorted by length, so little of each batch is padding."""
    device = next(backbone.parameters()).device
    dataset = BatchedSplit(split, max_len)
    order = torch.argsort(split.lengths, stable=True)
    vectors = []
    for start in range(0, len(split), batch_size):
        batch = dataset[order[start : start + batch_size].tolist()]
        inputs = {key: batch[key].to(device) for key in ("tokens", "offsets", "lengths")}
        vectors.append(backbone.embed(inputs).float().cpu())  # (B, H)
    by_length = torch.cat(vectors)  # (N, H), row i the document order[i]'s
    features = torch.empty_like(by_length)
    features[order] = by_length  # back in the split's order
    return features


def weights_sha256(module: nn.Module) -> str:
    """The sha256 of ``module``'s tensors: their names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(trainer: pl.Trainer, backbone: nn.Module, data_hash: str) -> str:
    """16 hex digits of the sha256 of all that determines ``embed_split``'s result but the split."""
    import transformers

    identity = {
        "data_hash": data_hash,
        "weights": weights_sha256(backbone.encoder),
        "architecture": backbone.architecture,
        "settings": {key: getattr(backbone, key) for key in ("max_len", "max_chunks", "pooling")},
        "device": next(backbone.parameters()).device.type,
        "precision": str(trainer.precision),
        "versions": [torch.__version__, transformers.__version__],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def attach_embeddings(trainer: pl.Trainer, backbone: nn.Module) -> None:
    """Hands the data module the features of the train and val splits, read from its
    ``embeddings_cache`` or computed there (rank 0 writes them). Called by TextClassifier.setup
    once the pretrained weights are in, before any data loader is made (the Trainer makes the
    training one as soon as the optimizer asks for the step count): its batches carry them."""
    datamodule: TextDataModule = trainer.datamodule
    backbone.to(trainer.strategy.root_device)  # where it is about to train; Lightning moves it there next
    key = None
    if datamodule.embeddings_cache is not None:
        key = cache_key(trainer, backbone, read_manifest(datamodule.processed)["data_hash"])
    with trainer.precision_plugin.forward_context():
        for name in SPLITS:
            path = None if key is None else datamodule.embeddings_cache / f"{key}-{name}.pt"
            if path is not None and path.is_file():
                datamodule.features[name] = torch.load(path, weights_only=True)
                continue
            split = datamodule.splits[name]
            features = embed_split(backbone, split, datamodule.max_len, datamodule.eval_batch_size)
            if path is not None and trainer.is_global_zero:
                with staged_file(path) as handle:
                    torch.save(features, handle)
            datamodule.features[name] = features
