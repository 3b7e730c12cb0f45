"""Long documents and frozen encoders (model=hf): encoder.truncation=chunks stores a document as
the tokenizer's own windows and the model averages their pooled states into one prediction;
model.freeze_encoder=true trains the head on document vectors computed once, which give the
logits and the weights that encoding every batch gives.

The tiny random BERT (tests/hf_models.py) has 64 positions; its tokenizer makes the tiny
corpus's documents 28 or 29 tokens long, so windows of 10 tokens (8 of text) cut each into 4
(of which max_chunks=3 keeps 3).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from hf_models import build_tiny_bert, hf_config, prepare, stored_documents
from lightning.pytorch.callbacks import Callback

from textclf.calibration import calibrated
from textclf.config import build
from textclf.data.datamodule import BatchedSplit, TextDataModule, tokens_kept
from textclf.data.encoded import EncodedSplit
from textclf.encoders.base import load_encoder
from textclf.errors import TextclfError
from textclf.models.checkpoint import load_checkpoint
from textclf.models.embeddings import EMBEDDINGS_DIR, embed_split
from textclf.models.sequence import pool
from textclf.stages.evaluate import predict
from textclf.stages.train import train
from textclf.tracking import mlflow_tracking_uri

from corpora import texts, write_table


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokenizers and torch on one core: these tests run beside others."""
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def table_config(tmp_path: Path, model: Path, *overrides: str, per_class: int = 10):
    train_file = write_table(tmp_path / "train.csv", texts(per_class=per_class))
    test_file = write_table(tmp_path / "test.csv", texts(per_class=4, seed=7))
    return hf_config(tmp_path, model, "data=table", f"data.train={train_file}", f"data.test={test_file}", *overrides)


def windows_by_hand(tokenizer, text: str, max_len: int, max_chunks: int) -> list[int]:
    """[CLS] window [SEP], one after the other, for the first max_chunks windows of the text's tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    size = max_len - 2
    windows = [ids[start : start + size] for start in range(0, len(ids), size)][:max_chunks] or [[]]
    return [token for window in windows for token in [tokenizer.cls_token_id, *window, tokenizer.sep_token_id]]


def test_chunks_stores_each_document_as_the_tokenizers_windows(tmp_path: Path, tiny_bert: Path) -> None:
    from transformers import AutoTokenizer

    cfg = table_config(tmp_path, tiny_bert, "model.max_len=10", "model.max_chunks=3", "encoder.truncation=chunks")
    prepare(cfg)

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    pairs = texts(per_class=10) + texts(per_class=4, seed=7)
    assert min(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for _, text in pairs) > 3 * 8  # all cut
    expected = {tuple(windows_by_hand(tokenizer, text, 10, 3)) for _, text in pairs}
    assert stored_documents(cfg.paths.processed) == expected
    assert {len(ids) for ids in expected} == {30}

    encoder = load_encoder(cfg.paths.processed)  # the shipped model's, from the processed files
    short = ["north south", ""]
    assert encoder.token_ids(short) == [windows_by_hand(tokenizer, text, 10, 3) for text in short]
    assert encoder.token_ids(short)[1] == [tokenizer.cls_token_id, tokenizer.sep_token_id]


def chunked_model(tmp_path: Path, tiny_bert: Path, *overrides: str):
    """The backbone of model=hf with its pretrained weights, in eval mode."""
    backbone = build("model", hf_config(tmp_path, tiny_bert, *overrides).model, vocab_size=10, num_classes=3)
    backbone.load_pretrained()
    return backbone.eval()


def batch_of(documents: list[list[int]], max_len: int | None) -> dict[str, torch.Tensor]:
    return BatchedSplit(EncodedSplit.from_token_ids(documents, [0] * len(documents)), max_len)[
        list(range(len(documents)))
    ]


def pooled_alone(backbone, ids: list[int]) -> torch.Tensor:
    """(H,): one window encoded on its own, no padding, pooled as the backbone pools."""
    hidden = backbone.encoder(input_ids=torch.tensor([ids])).last_hidden_state  # (1, L, H)
    real = torch.ones(1, len(ids), dtype=torch.bool)
    return hidden[0, 0] if backbone.pooling == "cls" else pool(hidden, real, "mean")[0]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@torch.no_grad()
def test_a_chunked_prediction_is_the_head_on_the_mean_of_its_windows_pooled_states(
    tmp_path: Path, tiny_bert: Path, pooling: str
) -> None:
    backbone = chunked_model(tmp_path, tiny_bert, "model.max_len=10", "model.max_chunks=3", f"model.pooling={pooling}")
    rng = torch.Generator().manual_seed(0)
    # Documents of 3, 2 and 1 windows, the last ones shorter: [CLS] (2) text [SEP] (3) each.
    documents = []
    for windows in ([8, 8, 5], [8, 3], [4]):
        documents.append(
            [t for size in windows for t in [2, *torch.randint(5, 100, (size,), generator=rng).tolist(), 3]]
        )
    logits = backbone(batch_of(documents, max_len=30))

    expected = []
    for ids in documents:
        windows = [ids[start : start + 10] for start in range(0, len(ids), 10)]
        mean = torch.stack([pooled_alone(backbone, window) for window in windows]).mean(dim=0)
        expected.append(backbone.classifier(mean))
    assert logits.shape == (3, 3)
    assert torch.allclose(logits, torch.stack(expected), atol=1e-5)


@torch.no_grad()
def test_a_document_of_one_window_gives_the_logits_of_head_truncation(tmp_path: Path, tiny_bert: Path) -> None:
    from textclf.encoders.hf import HuggingFaceTokenizer

    short = [text for _, text in texts(per_class=2)]  # 28 or 29 tokens: one window of 32
    encoders = {
        truncation: HuggingFaceTokenizer(str(tiny_bert), max_len=32, truncation=truncation, max_chunks=4)
        for truncation in ("head", "chunks")
    }
    ids = {truncation: encoder.token_ids(short) for truncation, encoder in encoders.items()}
    assert ids["chunks"] == ids["head"]

    backbone = chunked_model(tmp_path, tiny_bert, "model.max_len=32")
    batch = batch_of(ids["head"], max_len=32)
    padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(d) for d in ids["head"]], batch_first=True)  # (B, L)
    hidden = backbone.encoder(input_ids=padded, attention_mask=(padded != 0).long()).last_hidden_state
    assert torch.equal(backbone(batch), backbone.classifier(hidden[:, 0]))  # one window: the head's logits


def test_max_chunks_is_checked_and_shared_with_the_encoder(tmp_path: Path) -> None:
    with pytest.raises(TextclfError, match=r"model.max_chunks"):
        hf_config(tmp_path, "some/model", "model.max_chunks=0")
    with pytest.raises(TextclfError, match=r"encoder.max_chunks: 2 is not model.max_chunks \(4\)"):
        hf_config(tmp_path, "some/model", "encoder.max_chunks=2")
    cfg = hf_config(tmp_path, "some/model", "model.max_len=16", "model.max_chunks=3")
    assert tokens_kept(cfg.model) == 48  # what train, evaluate and the shipped model keep of a document
    assert tokens_kept({"max_len": 16}) == 16 and tokens_kept({}) is None


def test_a_chunked_fine_tune_learns_and_the_shipped_model_gives_evaluates_probabilities(
    tmp_path: Path, tiny_bert: Path, hf_home: Path, mlflow_uri: str
) -> None:
    from textclf.pipeline import run_pipeline

    cfg = table_config(
        tmp_path,
        tiny_bert,
        "encoder.truncation=chunks",
        "model.max_len=16",
        "model.max_chunks=2",
        "model.pooling=mean",
        "scheduler=none",
        "optimizer.lr=0.003",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "train.batch_size=8",
        "train.eval_batch_size=8",
        "train.resume_interval_s=null",
        per_class=24,
    )
    summary = run_pipeline(cfg, tmp_path / "job")
    assert summary["test_accuracy"] > 0.6  # three classes: chance is a third

    processed = next((tmp_path / "cache" / "processed").iterdir())
    module = load_checkpoint(tmp_path / "job" / "models" / "model.ckpt")
    assert tokens_kept(module.hparams.model) == 32
    datamodule = TextDataModule(processed, batch_size=8, eval_batch_size=8, max_len=tokens_kept(module.hparams.model))
    assert int(EncodedSplit.load(processed / "test.pt").lengths.min()) > 16  # two windows each
    temperature = json.loads((tmp_path / "job" / "reports" / "metrics.json").read_text())["temperature"]
    expected = calibrated(predict(module, datamodule)[0], temperature)  # evaluate's probabilities, in test order
    with mlflow_tracking_uri(mlflow_uri):
        served = mlflow.pyfunc.load_model(f"runs:/{summary['run_id']}/model")
    frame = served.predict(pd.DataFrame({"text": [text for _, text in texts(per_class=4, seed=7)]}))
    labels = json.loads((processed / "labels.json").read_text())
    assert frame[labels].to_numpy() == pytest.approx(expected.double().numpy(), abs=1e-5)


@torch.no_grad()
def test_the_features_computed_once_give_the_logits_of_the_tokens(tmp_path: Path, tiny_bert: Path) -> None:
    cfg = table_config(tmp_path, tiny_bert, "encoder.truncation=chunks", "model.max_len=10", "model.max_chunks=3")
    prepare(cfg)
    backbone = chunked_model(tmp_path, tiny_bert, "model.max_len=10", "model.max_chunks=3", "model.freeze_encoder=true")
    assert backbone.fixed_embeddings
    split = EncodedSplit.load(cfg.paths.processed / "train.pt")
    features = embed_split(backbone, split, max_len=30, batch_size=7)  # batches by length, back in order
    assert features.shape == (len(split), 32)

    indices = [5, 0, 17, 3]
    on_tokens = BatchedSplit(split, 30)[indices]
    on_features = BatchedSplit(split, 30, features)[indices]
    assert set(on_features) == {"features", "labels"}
    assert torch.allclose(backbone(on_features), backbone(on_tokens), atol=1e-5)


class Seen(Callback):
    """Keeps the features the data module holds when training starts, what the training and
    validation batches carry, and the head's weights when training ends (the delivered
    checkpoint is the best epoch's, which a tie in the tiny validation split's scores could
    make another one)."""

    def __init__(self) -> None:
        self.features: dict[str, torch.Tensor] = {}
        self.keys: set[tuple[str, ...]] = set()
        self.head: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.features = dict(trainer.datamodule.features)
        self.keys = set()
        assert not pl_module.backbone.encoder.training  # frozen: no dropout in it either

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.keys.add(tuple(sorted(batch)))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.keys.add(tuple(sorted(batch)))

    def on_train_end(self, trainer, pl_module) -> None:
        self.head = {name: tensor.clone() for name, tensor in pl_module.backbone.classifier.state_dict().items()}


class Killed(BaseException):
    """Ends the training as a SIGKILL would: no handler of the stage's runs (not an Exception)."""


class KillAtEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise Killed


def test_a_frozen_training_on_cached_embeddings_ends_with_the_weights_of_one_on_tokens(
    tmp_path: Path, tiny_bert: Path, mlflow_uri: str
) -> None:
    settings = [
        "encoder.truncation=chunks",
        "model.max_len=16",
        "model.max_chunks=2",
        "model.freeze_encoder=true",
        "scheduler=none",
        "optimizer.lr=0.01",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
        "train.batch_size=8",
        "train.eval_batch_size=8",
        "train.resume_interval_s=0",
    ]
    cfg = table_config(tmp_path, tiny_bert, *settings)
    prepare(cfg)

    def trained(cfg, name: str, *callbacks: Callback) -> dict[str, torch.Tensor]:
        """-> the head's weights at the end; the features training saw are in ``seen``."""
        models = tmp_path / name
        train(cfg, cfg.paths.processed, models, tmp_path / f"{name}-reports", callbacks=[seen, *callbacks])
        return seen.head

    seen = Seen()
    cached = trained(cfg, "cached")
    assert set(seen.features) == {"train", "val"} and seen.features["train"].shape[1] == 32
    assert seen.keys == {("features", "labels")}  # neither training nor validation runs the encoder
    stored = sorted((cfg.paths.cache / EMBEDDINGS_DIR).glob("*.pt"))
    assert len(stored) == 2  # train and val

    on_tokens = trained(table_config(tmp_path, tiny_bert, *settings, "model.cache_embeddings=false"), "tokens")
    assert seen.features == {} and seen.keys == {("labels", "lengths", "offsets", "tokens")}  # all encoded
    assert cached.keys() == on_tokens.keys() == {"weight", "bias"}
    for name, tensor in cached.items():
        assert torch.allclose(tensor, on_tokens[name], atol=1e-5), name

    # Killed after an epoch and resumed, with the vectors computed again: the same weights.
    shutil.rmtree(cfg.paths.cache / EMBEDDINGS_DIR)
    with pytest.raises(Killed):
        trained(cfg, "resumed", KillAtEpoch(1))
    resumed = trained(cfg, "resumed")
    assert all(torch.equal(tensor, resumed[name]) for name, tensor in cached.items())

    # Another head setting reads the vectors back from the cache instead of encoding.
    doctored = [torch.load(path, weights_only=True) + 1 for path in stored]
    for path, features in zip(stored, doctored, strict=True):
        torch.save(features, path)
    trained(table_config(tmp_path, tiny_bert, *settings, "optimizer.lr=0.02"), "other-lr")
    assert len(seen.features) == 2
    assert all(any(torch.equal(seen_, features) for features in doctored) for seen_ in seen.features.values())
