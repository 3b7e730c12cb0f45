"""Pretrained encoders (model=hf): the model's own tokenizer in preprocess, fine-tuning, the
shipped model without the model's files, and bad params caught in one line.

The "pretrained" model is a tiny random BERT built here (2 layers, 32 wide) with a WordPiece
tokenizer trained on the tiny corpus, saved under tmp_path: no network, no download.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from hf_models import MAX_POSITIONS, build_tiny_bert, hf_config, prepare, stored_documents

from textclf.calibration import calibrated
from textclf.config import build, validate
from textclf.data.datamodule import TextDataModule
from textclf.encoders.base import ENCODER_FILE, load_encoder
from textclf.errors import TextclfError
from textclf.models.checkpoint import check_hyperparameters, load_checkpoint
from textclf.params import compose
from textclf.stages.evaluate import predict
from textclf.tracking import mlflow_tracking_uri

from conftest import REPO_ROOT
from corpora import texts, write_folder, write_table


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


@pytest.mark.parametrize("truncation", ["head", "head_tail"])
def test_preprocess_writes_the_model_tokenizers_ids_cut_to_max_len(
    tmp_path: Path, tiny_bert: Path, truncation: str
) -> None:
    from transformers import AutoTokenizer

    pairs = texts(per_class=10)
    if truncation == "head":
        data = ["data=folder", f"data.path={write_folder(tmp_path / 'corpus', pairs)}"]
    else:
        data = ["data=table", f"data.train={write_table(tmp_path / 'corpus.csv', pairs)}"]
    cfg = hf_config(tmp_path, tiny_bert, *data, "model.max_len=16", f"encoder.truncation={truncation}")
    manifest = prepare(cfg)

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    whole = [tokenizer(text)["input_ids"] for _, text in pairs]
    assert min(map(len, whole)) > 16  # every document is cut
    if truncation == "head":
        expected = {tuple(tokenizer(text, truncation=True, max_length=16)["input_ids"]) for _, text in pairs}
    else:  # [CLS], the first 4 and the last 10 of the 14 text tokens that fit, [SEP]
        expected = {tuple(ids[:5] + ids[-11:]) for ids in whole}
    assert stored_documents(cfg.paths.processed) == expected
    assert manifest["vocab_size"] == len(tokenizer)
    assert manifest["params"]["encoder"] == {
        "name": str(tiny_bert),
        "max_len": 16,
        "truncation": truncation,
        "max_chunks": 4,
    }
    assert "tokenizer/tokenizer.json" in manifest["files"]
    encoder = load_encoder(cfg.paths.processed)  # from the processed files alone
    served = encoder.encode([text for _, text in pairs])
    assert served["lengths"].tolist() == [16] * len(pairs)
    documents = served["tokens"].split(served["lengths"].tolist())
    assert {tuple(ids.tolist()) for ids in documents} == expected


def test_display_tokens_are_the_tokenizers_pieces_special_tokens_included(tiny_bert: Path) -> None:
    encoder = build(
        "encoder",
        {"_target_": "textclf.encoders.hf.HuggingFaceTokenizer", "name": str(tiny_bert), "max_len": 16}
        | {"truncation": "head", "max_chunks": 4},
    )
    text = "Sail the Rocket"
    (ids,) = encoder.token_ids([text])
    pieces = encoder.display_tokens(ids)
    assert len(pieces) == len(ids) and pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert " ".join(pieces[1:-1]).replace(" ##", "") == text.lower()  # WordPiece: "##" continues a word


def test_fine_tuning_learns_and_the_shipped_model_needs_no_model_files(
    tmp_path: Path, tiny_bert: Path, hf_home: Path, mlflow_uri: str
) -> None:
    from textclf.pipeline import run_pipeline

    model = shutil.copytree(tiny_bert, tmp_path / "model")
    train = write_table(tmp_path / "train.csv", texts(per_class=24))
    test_pairs = texts(per_class=6, seed=7)
    test = write_table(tmp_path / "test.csv", test_pairs)
    cfg = hf_config(
        tmp_path,
        model,
        "data=table",
        f"data.train={train}",
        f"data.test={test}",
        "model.max_len=32",
        "model.pooling=mean",
        "scheduler=none",
        "optimizer.lr=0.003",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "train.batch_size=8",
        "train.eval_batch_size=8",
        "train.resume_interval_s=null",
    )
    summary = run_pipeline(cfg, tmp_path / "job")
    assert summary["test_accuracy"] > 0.6  # three classes: chance is a third

    checkpoint = tmp_path / "job" / "models" / "model.ckpt"
    hyperparameters = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    assert hyperparameters["model"]["architecture"]["hidden_size"] == 32  # plain data, checked on load
    assert check_hyperparameters(hyperparameters) == []
    processed = next((tmp_path / "cache" / "processed").iterdir())
    module = load_checkpoint(checkpoint)
    datamodule = TextDataModule(processed, batch_size=8, eval_batch_size=8, max_len=32)
    temperature = json.loads((tmp_path / "job" / "reports" / "metrics.json").read_text())["temperature"]
    expected = calibrated(predict(module, datamodule)[0], temperature)  # evaluate's probabilities, in test order

    shutil.rmtree(model)  # the shipped model carries what it needs
    with mlflow_tracking_uri(mlflow_uri):
        served = mlflow.pyfunc.load_model(f"runs:/{summary['run_id']}/model")
        local = Path(mlflow.artifacts.download_artifacts(f"runs:/{summary['run_id']}/model", dst_path=str(tmp_path)))
    frame = served.predict(pd.DataFrame({"text": [text for _, text in test_pairs]}))
    labels = json.loads((processed / "labels.json").read_text())
    assert frame[labels].to_numpy() == pytest.approx(expected.double().numpy(), abs=1e-5)
    encoder_files = {
        p.relative_to(local / "artifacts" / "encoder").as_posix() for p in (local / "artifacts" / "encoder").rglob("*")
    }
    assert {ENCODER_FILE, "tokenizer/tokenizer.json"} <= encoder_files
    assert [p.relative_to(local).as_posix() for p in local.rglob("*.safetensors")] == ["artifacts/model.safetensors"]
    assert not list(local.rglob("*.ckpt"))  # the fine-tuned weights as safetensors, no pickle
    requirements = (local / "requirements.txt").read_text().split()
    assert {"transformers", "safetensors"} <= {line.split("==")[0] for line in requirements}


def bad(tmp_path: Path, model: Path | str, *overrides: str) -> list[str]:
    """The one-line errors of preprocess and of building the model, for one config."""
    corpus = write_folder(tmp_path / "corpus", texts(per_class=4))
    cfg = hf_config(tmp_path, model, "data=folder", f"data.path={corpus}", *overrides)
    messages = []
    with pytest.raises(TextclfError) as error:
        prepare(cfg)
    messages.append(str(error.value))
    with pytest.raises(TextclfError) as error:
        build("model", cfg.model, vocab_size=10, num_classes=3)
    messages.append(str(error.value))
    assert all("\n" not in message for message in messages)
    assert not cfg.paths.processed.exists()
    return messages


def test_max_len_beyond_the_position_embeddings_is_one_line(tmp_path: Path, tiny_bert: Path) -> None:
    for message in bad(tmp_path, tiny_bert, f"model.max_len={MAX_POSITIONS + 1}"):
        assert f"model.max_len={MAX_POSITIONS + 1} is beyond the {MAX_POSITIONS} positions" in message


def test_a_directory_without_tokenizer_files_is_one_line(tmp_path: Path, tiny_bert: Path) -> None:
    model = tmp_path / "no-tokenizer"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(tiny_bert / name, model / name)
    corpus = write_folder(tmp_path / "corpus", texts(per_class=4))
    cfg = hf_config(tmp_path, model, "data=folder", f"data.path={corpus}")
    with pytest.raises(TextclfError, match="no tokenizer files in the directory") as error:
        prepare(cfg)
    assert "\n" not in str(error.value) and str(model) in str(error.value)


def test_a_hub_id_not_cached_offline_is_one_line_naming_it(tmp_path: Path, hf_home: Path) -> None:
    for message in bad(tmp_path, "someone/not-cached-model"):
        assert "model.name='someone/not-cached-model'" in message
        assert "offline" in message and "point model.name at a local copy" in message


def test_model_hf_refuses_another_encoder_and_a_missing_name(tmp_path: Path) -> None:
    with pytest.raises(TextclfError, match=r"model=hf reads the ids of the model's own tokenizer"):
        hf_config(tmp_path, "some/model", "encoder=regex")
    with pytest.raises(TextclfError, match=r"model.name: missing"):
        validate(compose(["model=hf"], root=REPO_ROOT))


def test_a_checkpoints_architecture_must_be_plain_data_of_a_known_model(tmp_path: Path, tiny_bert: Path) -> None:
    from textclf.pretrained import architecture, load_config

    recorded = architecture(load_config(str(tiny_bert)))
    model = {**hf_config(tmp_path, "gone/model", "model.max_len=32").model, "architecture": recorded}
    backbone = build("model", model, vocab_size=10, num_classes=3)  # no files read: "gone/model" is not there
    assert backbone.classifier.in_features == 32
    hyperparameters = {
        "model": {**model, "architecture": {**recorded, "hidden_size": torch.ones(1)}},
        "optimizer": hf_config(tmp_path, "gone/model").optimizer.model_dump(by_alias=True),
        "scheduler": {"_target_": "textclf.models.schedules.constant", "_partial_": True},
        "vocab_size": 10,
        "num_classes": 3,
    }
    assert any("model.architecture" in problem for problem in check_hyperparameters(hyperparameters))
    with pytest.raises(TextclfError, match="model_type 'nope' is not a model transformers knows"):
        build("model", {**model, "architecture": {**recorded, "model_type": "nope"}}, vocab_size=10, num_classes=3)


def test_training_starts_from_the_pretrained_weights_which_building_does_not_read(
    tmp_path: Path, tiny_bert: Path
) -> None:
    from safetensors.torch import load_file

    from textclf.models.classifier import TextClassifier

    # No Trainer here, so no data module to hand the embeddings computed once to.
    cfg = hf_config(
        tmp_path, tiny_bert, "model.max_len=32", "model.freeze_encoder=true", "model.cache_embeddings=false"
    )
    sections = {section: getattr(cfg, section) for section in ("model", "scheduler")}
    module = TextClassifier(
        **sections, optimizer=cfg.optimizer.model_dump(by_alias=True), vocab_size=100, num_classes=3
    )
    pretrained = load_file(tiny_bert / "model.safetensors")["embeddings.word_embeddings.weight"]
    embeddings = module.backbone.encoder.embeddings.word_embeddings.weight
    assert not torch.equal(embeddings, pretrained)  # built from config.json alone
    module.setup("fit")
    assert torch.equal(embeddings, pretrained)
    assert module.hparams.model["architecture"]["num_hidden_layers"] == 2  # recorded for the checkpoint
    assert not any(p.requires_grad for p in module.backbone.encoder.parameters())  # frozen: the head trains
    assert module.train().backbone.encoder.training is False  # and no dropout in it
