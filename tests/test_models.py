"""Backbones, batching and schedules on hand-made tensors."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from textclf.data.datamodule import BatchedSplit
from textclf.data.encoded import PAD_ID, EncodedSplit
from textclf.models.fasttext import BIGRAM_HASH_PRIME, bigram_ids
from textclf.models.schedules import constant, cosine, linear_warmup
from textclf.models.sequence import pad_batch
from textclf.params import compose

from conftest import REPO_ROOT

# Four documents, one of them empty: ids start at 2 (0 = pad, 1 = unk).
DOCUMENTS = [[2, 3, 4], [5], [], [6, 7, 8, 9]]
LABELS = [0, 1, 2, 1]
VOCAB = 10


def batch(max_len: int | None = None) -> dict[str, torch.Tensor]:
    split = EncodedSplit.from_token_ids(DOCUMENTS, LABELS)
    return BatchedSplit(split, max_len)[[0, 1, 2, 3]]


def test_batches_are_sliced_from_the_flat_tensors() -> None:
    b = batch()
    assert b["tokens"].tolist() == [2, 3, 4, 5, 6, 7, 8, 9]
    assert b["offsets"].tolist() == [0, 3, 4, 4]
    assert b["lengths"].tolist() == [3, 1, 0, 4]
    assert b["labels"].tolist() == LABELS


def test_max_len_keeps_the_first_tokens_of_each_document() -> None:
    b = batch(max_len=2)
    assert b["tokens"].tolist() == [2, 3, 5, 6, 7]
    assert b["lengths"].tolist() == [2, 1, 0, 2]


def test_bigrams_never_cross_document_boundaries() -> None:
    b = batch()
    ids, offsets, lengths = bigram_ids(b["tokens"], b["offsets"], b["lengths"], VOCAB, buckets=1000)
    pairs = [(2, 3), (3, 4), (6, 7), (7, 8), (8, 9)]
    expected = [(a * BIGRAM_HASH_PRIME + c) % 1000 + VOCAB for a, c in pairs]
    assert ids.tolist() == expected
    assert lengths.tolist() == [2, 0, 0, 3]
    assert offsets.tolist() == [0, 2, 2, 2]


def test_pad_batch_pads_with_pad_id() -> None:
    b = batch()
    padded = pad_batch(b["tokens"], b["lengths"])
    assert padded.tolist() == [[2, 3, 4, 0], [5, 0, 0, 0], [0, 0, 0, 0], [6, 7, 8, 9]]
    assert PAD_ID == 0


@pytest.mark.parametrize(
    "overrides",
    [["model=fasttext"], ["model=lstm"], ["model=transformer"], ["model=transformer", "model.pooling=max_mean"]],
)
def test_every_backbone_maps_a_batch_to_finite_logits(overrides: list[str]) -> None:
    cfg = compose(overrides, root=REPO_ROOT)
    backbone = instantiate(cfg.model, vocab_size=VOCAB, num_classes=3)
    b = batch(max_len=cfg.model.max_len)
    logits = backbone(b)
    assert logits.shape == (4, 3)
    assert torch.isfinite(logits).all()
    logits.sum().backward()  # gradients flow, also through the empty document


@pytest.mark.parametrize("pooling", ["mean", "max_mean"])
def test_transformer_pooling_ignores_padding(pooling: str) -> None:
    """A document's logits do not depend on how much longer the other documents in its batch are."""
    cfg = compose(["model=transformer", f"model.pooling={pooling}", "model.dropout=0.0"], root=REPO_ROOT)
    torch.manual_seed(0)
    backbone = instantiate(cfg.model, vocab_size=VOCAB, num_classes=3).eval()
    alone = BatchedSplit(EncodedSplit.from_token_ids([[2, 3]], [0]), None)[[0]]
    padded = BatchedSplit(EncodedSplit.from_token_ids([[2, 3], [4, 5, 6, 7, 8]], [0, 1]), None)[[0, 1]]
    with torch.no_grad():
        first = backbone(alone)
        second = backbone(padded)[:1]
    assert torch.allclose(first, second, atol=1e-5)


def test_schedules_follow_their_shapes() -> None:
    def lrs(factory, **kwargs) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = factory(optimizer, total_steps=10, **kwargs)
        values = []
        for _ in range(10):
            values.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return values

    assert lrs(constant) == [1.0] * 10
    warm = lrs(linear_warmup, warmup_fraction=0.2)
    assert warm[0] < warm[1] == pytest.approx(1.0) and warm[-1] < 0.2
    cos = lrs(cosine, warmup_fraction=0.0, min_lr_ratio=0.1)
    assert cos[0] == pytest.approx(1.0) and all(a >= b for a, b in zip(cos, cos[1:])) and cos[-1] >= 0.1


def test_sparse_tables_are_stepped_by_sparse_adam_with_the_scheduled_lr() -> None:
    from torch import nn

    from textclf.models.optim import DenseSparseOptimizer, build_optimizer

    model = nn.Sequential(nn.EmbeddingBag(20, 4, mode="sum", sparse=True), nn.Linear(4, 2))
    optimizer = build_optimizer(lambda params: torch.optim.Adam(params, lr=0.1), model)
    assert isinstance(optimizer, DenseSparseOptimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    table_before = model[0].weight.detach().clone()
    linear_before = model[1].weight.detach().clone()

    loss = model[1](model[0](torch.tensor([1, 2, 3]), torch.tensor([0]))).sum()
    loss.backward()
    assert model[0].weight.grad.is_sparse
    optimizer.step()
    scheduler.step()
    changed_rows = (model[0].weight != table_before).any(dim=1).nonzero().flatten().tolist()
    assert changed_rows == [1, 2, 3]  # only the rows the batch used
    assert not torch.equal(model[1].weight, linear_before)
    assert optimizer.dense.param_groups[0]["lr"] == optimizer.sparse.param_groups[0]["lr"] == 0.05

    restored = build_optimizer(lambda params: torch.optim.Adam(params, lr=0.1), model)
    restored.load_state_dict(optimizer.state_dict())
    assert restored.sparse.state_dict()["state"][0]["step"] == 1


def test_tfidf_weights_spread_sublinear_tf_times_idf_over_occurrences() -> None:
    import math

    from textclf.models.fasttext import FastText

    split = EncodedSplit.from_token_ids([[2, 2, 3], [3, 4]], [0, 1])
    frequency = split.document_frequency(VOCAB)
    assert frequency[2:5].tolist() == [1, 2, 1] and frequency[5:].sum() == 0
    model = FastText(VOCAB, 2, embed_dim=4, ngram_buckets=0, dropout=0.0, sparse=False, weighting="tfidf")
    model.set_document_frequency(frequency, num_documents=2)
    idf = model.idf
    assert idf[3].item() == pytest.approx(math.log(3 / 3) + 1) and idf[2].item() == pytest.approx(math.log(3 / 2) + 1)
    weights = model._word_weights(torch.tensor([2, 2, 3, 3, 4]), torch.tensor([3, 2]))
    expected_2 = idf[2].item() * (1 + math.log(2)) / 2
    assert weights.tolist() == pytest.approx([expected_2, expected_2, idf[3].item(), idf[3].item(), idf[4].item()])


def test_length_buckets_group_similar_lengths_and_cover_every_document() -> None:
    from torch.utils.data import RandomSampler

    from textclf.data.datamodule import EpochBatchSampler

    lengths = torch.tensor([50, 1, 49, 2, 48, 3, 47, 4])
    sampler = EpochBatchSampler(RandomSampler(range(8)), batch_size=2, lengths=lengths, bucket_batches=4, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(8))
    spans = [int(lengths[b].max() - lengths[b].min()) for b in batches]
    assert max(spans) <= 2  # sorted within the bucket: short with short, long with long
    sampler.set_epoch(1)
    assert sorted(i for b in sampler for i in b) == list(range(8))
