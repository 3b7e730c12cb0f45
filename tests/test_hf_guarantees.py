"""The guarantees of the from-scratch models, for a pretrained encoder (model=hf): bitwise
reruns on CPU on one and two DDP processes, SIGKILL and resume to the uninterrupted weights,
the shipped model (`python -m textclf.predict`, `mlflow models serve`) giving evaluate's
probabilities without the model's files or the Hub, and `dvc exp run -S model=hf`.

The "pretrained" model is the tiny random BERT of tests/hf_models.py (2 layers, 32 wide),
fine-tuned on a tiny table corpus; every process runs offline (the hf_home fixture).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_models import build_tiny_bert
from mlflow import MlflowClient
from test_dvc_pipeline import copy_repository, run, stages_run
from test_guarantees_resume import completed, kill_after_first_epoch, stage_command
from test_serving import post, served_model

from textclf.calibration import calibrated
from textclf.config import Config, load_params, validate
from textclf.data.datamodule import TextDataModule
from textclf.models.checkpoint import load_checkpoint
from textclf.params import compose, write_params
from textclf.stages.download import download
from textclf.stages.evaluate import evaluate, predict
from textclf.stages.preprocess import preprocess
from textclf.stages.train import train

from conftest import REPO_ROOT, assert_same_weights, subprocess_env
from corpora import texts, write_table

# A resume point every epoch (train.resume_interval_s=0): the kill lands after the first, well
# before the last.
EPOCHS = 5
PROCESS_TIMEOUT = 300
TEST_PAIRS = texts(per_class=4, seed=7)  # 12 test documents, in the order evaluate scores them


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokenizers and torch on one core, here and in the processes the tests start."""
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # train.num_threads=1 sets it for this process


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train table, test table): 3 classes, 16 and 4 documents each."""
    root = tmp_path_factory.mktemp("corpus")
    return write_table(root / "train.csv", texts(per_class=16)), write_table(root / "test.csv", TEST_PAIRS)


def overrides(model: Path, corpus: tuple[Path, Path], epochs: int = EPOCHS, resume_interval_s: str = "0") -> list[str]:
    """The real config with model=hf, shrunk to the tiny BERT and corpus: under a second an
    epoch. Dropout stays on (the model's and BERT's own), so a rerun must draw the same masks."""
    train_table, test_table = corpus
    return [
        "model=hf",
        f"model.name={model}",
        "model.max_len=32",
        "model.pooling=mean",
        "data=table",
        f"data.train={train_table}",
        f"data.test={test_table}",
        "optimizer.lr=0.003",
        f"trainer.max_epochs={epochs}",
        "trainer.enable_progress_bar=false",
        "train.batch_size=8",
        "train.eval_batch_size=8",
        f"train.resume_interval_s={resume_interval_s}",
        "train.num_threads=1",  # the same count in this process and in the ones the tests start
        # The validation scores reach 1.0 in the first epoch; by its loss the best model is a late
        # one, so the weights compared are not those of the first epoch, before any resume.
        "train.monitor=val/loss",
    ]


def paths(root: Path) -> list[str]:
    return [f"paths.{name}={root / name}" for name in ("raw", "processed", "models", "reports", "cache")]


def prepared(root: Path, model: Path, corpus: tuple[Path, Path], epochs: int = EPOCHS) -> Config:
    """The config under ``root`` (its own SQLite store), downloaded and preprocessed."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = validate(compose([*overrides(model, corpus, epochs), *paths(root), f"tracking.uri={uri}"], root=REPO_ROOT))
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed, parallel=False)
    return cfg


def evaluated_probabilities(cfg: Config) -> torch.Tensor:
    """-> (N, C) evaluate's calibrated probabilities over the test split (TEST_PAIRS' order),
    from models/ and the temperature in reports/metrics.json."""
    module = load_checkpoint(cfg.paths.models / "model.ckpt")
    batch = cfg.train.eval_batch_size
    max_len = module.hparams.model.get("max_len")
    datamodule = TextDataModule(cfg.paths.processed, batch_size=batch, eval_batch_size=batch, max_len=max_len)
    temperature = json.loads((cfg.paths.reports / "metrics.json").read_text())["temperature"]
    return calibrated(predict(module, datamodule)[0], temperature)


def test_making_an_epochs_batches_draws_nothing_from_the_global_generator(
    tiny_bert: Path, corpus, tmp_path: Path, hf_home: Path
) -> None:
    """Lightning makes each epoch's iterator after the epoch is reseeded (callbacks.EpochSeed),
    but the resumed epoch's before: a draw from the global RNG there would shift every dropout
    mask after a resume. (A DataLoader without a generator of its own draws its base seed.)"""
    cfg = prepared(tmp_path, tiny_bert, corpus)
    datamodule = TextDataModule(cfg.paths.processed, batch_size=8, eval_batch_size=8, max_len=32)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    state = torch.get_rng_state()
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)  # as Lightning does (the sampler yields whole batches)
        assert sum(len(batch["labels"]) for batch in loader) == len(datamodule.splits["train"])
        assert torch.equal(torch.get_rng_state(), state), f"epoch {epoch}"


@pytest.mark.slow
def test_hf_hydra_jobs_with_one_seed_are_bitwise_equal_on_one_and_two_processes(
    tiny_bert: Path, corpus, tmp_path: Path, hf_home: Path
) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "conf").symlink_to(REPO_ROOT / "conf")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Jobs 0, 1: one process; jobs 2, 3: two DDP processes (gloo), each the whole pipeline.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "textclf",
            "-m",
            *overrides(tiny_bert, corpus, epochs=2),
            "trainer.devices=1,2",
            "tracking.run_name=first,again",
            "hydra.sweep.dir=sweep",
        ],
        cwd=cwd,
        # TEXTCLF_FORCE: train the repeated config again rather than skip it as finished.
        env=subprocess_env(MLFLOW_TRACKING_URI=uri, TEXTCLF_FORCE="1"),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (cwd / "sweep" / "2" / "train_ddp_process_1.log").read_text()
    for one, again in (("0", "1"), ("2", "3")):
        job, rerun = cwd / "sweep" / one, cwd / "sweep" / again
        assert_same_weights(job / "models" / "model.ckpt", rerun / "models" / "model.ckpt")
        for report in ("metrics.json", "training_curves.csv", "confusion.csv"):
            assert (job / "reports" / report).read_text() == (rerun / "reports" / report).read_text(), report
    # Every job, the DDP ones included, ends with a model evaluate scored, in a run of its own.
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert sorted(r.data.params["trainer.devices"] for r in runs) == ["1", "1", "2", "2"]
    for record in runs:
        assert record.info.status == "FINISHED"
        assert {"train/loss_epoch", "val/f1_macro", "test/accuracy"} <= set(record.data.metrics)
    ddp = json.loads((cwd / "sweep" / "2" / "reports" / "metrics.json").read_text())
    assert ddp["accuracy"] > 0.5  # three classes: chance is a third


@pytest.mark.slow
def test_a_killed_hf_train_stage_resumes_to_the_uninterrupted_result(
    tiny_bert: Path, corpus, tmp_path: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = prepared(tmp_path / "uninterrupted", tiny_bert, corpus)
    train(reference, reference.paths.processed, reference.paths.models, reference.paths.reports)

    root = tmp_path / "killed"
    root.mkdir()
    params = root / "params.yaml"
    write_params(params, [*overrides(tiny_bert, corpus), *paths(root)], root=REPO_ROOT)
    cfg = load_params(params)
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed, parallel=False)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = subprocess_env(MLFLOW_TRACKING_URI=uri)
    kill_after_first_epoch(stage_command("train", params), root, env, cfg.paths.cache / "resume")
    assert not cfg.paths.models.exists()  # killed: nothing half-written in the stage's outputs
    output = completed(stage_command("train", params), root, env)
    assert "train: resuming from" in output

    assert_same_weights(cfg.paths.models / "model.ckpt", reference.paths.models / "model.ckpt")
    assert torch.load(cfg.paths.models / "model.ckpt", weights_only=True)["epoch"] > 0  # trained after the kill
    curves = (cfg.paths.reports / "training_curves.csv").read_text()
    assert curves == (reference.paths.reports / "training_curves.csv").read_text()
    assert len(curves.splitlines()) == 1 + EPOCHS
    client = MlflowClient(uri)
    (record,) = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert record.info.status == "FINISHED" and record.data.tags["resumed"] == "true"
    epochs = sorted(m.step for m in client.get_metric_history(record.info.run_id, "val/f1_macro"))
    assert epochs == sorted(set(epochs)) and len(epochs) == EPOCHS  # the same run, every epoch once
    assert json.loads((cfg.paths.models / "mlflow_run.json").read_text())["run_id"] == record.info.run_id
    assert list((cfg.paths.cache / "resume").glob("*/*")) == []  # finished: the resume point is gone

    evaluate(reference, reference.paths.processed, reference.paths.models, reference.paths.reports)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    metrics = evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    assert metrics == json.loads((reference.paths.reports / "metrics.json").read_text())


@pytest.mark.slow
def test_the_shipped_hf_model_gives_evaluates_probabilities_through_predict_and_mlflow_serve(
    tiny_bert: Path, corpus, tmp_path: Path, hf_home: Path
) -> None:
    model = shutil.copytree(tiny_bert, tmp_path / "model")
    cfg = prepared(tmp_path, model, corpus, epochs=2)
    summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    expected = evaluated_probabilities(cfg).double()  # (N, C), in TEST_PAIRS' order
    labels = json.loads((cfg.paths.processed / "labels.json").read_text())
    shutil.rmtree(model)  # the shipped model carries what it needs; the Hub is offline (hf_home)

    uri = cfg.tracking.uri
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("".join(text + "\n" for _, text in TEST_PAIRS), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "textclf.predict", "--run-id", summary.run_id, "--file", str(texts_file), "--json"],
        cwd=tmp_path,
        env=subprocess_env(MLFLOW_TRACKING_URI=uri),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    rows = json.loads(result.stdout)
    assert [row["text"] for row in rows] == [text for _, text in TEST_PAIRS]
    predicted = torch.tensor([[row["probabilities"][label] for label in labels] for row in rows], dtype=torch.float64)
    torch.testing.assert_close(predicted, expected, rtol=0, atol=1e-5)

    with served_model(f"runs:/{summary.run_id}/model", uri, tmp_path) as base:
        body = json.dumps({"dataframe_records": [{"text": text} for _, text in TEST_PAIRS]})
        status, answer = post(f"{base}/invocations", body.encode())
    assert status == 200, answer
    served = torch.tensor([[row[label] for label in labels] for row in answer["predictions"]], dtype=torch.float64)
    torch.testing.assert_close(served, expected, rtol=0, atol=1e-5)
    assert [row["label"] for row in answer["predictions"]] == [labels[i] for i in expected.argmax(dim=1).tolist()]


@pytest.mark.slow
def test_dvc_exp_run_fine_tunes_a_local_hf_model_and_reruns_nothing_unchanged(
    tiny_bert: Path, corpus, tmp_path: Path, hf_home: Path
) -> None:
    model = shutil.copytree(tiny_bert, tmp_path / "model")  # edited below
    repo = copy_repository(tmp_path / "repo")
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_run = ["dvc", "exp", "run"]
    for override in overrides(model, corpus, epochs=2, resume_interval_s="null"):
        exp_run += ["-S", override]
    first = run(exp_run, repo, env)
    assert stages_run(first) == ["download", "preprocess", "train", "evaluate"]
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.5  # three classes: chance is a third
    manifest = json.loads((repo / "data" / "processed" / "manifest.json").read_text())
    assert manifest["params"]["encoder"]["name"] == str(model)

    assert stages_run(run(exp_run, repo, env)) == []  # nothing changed: nothing runs

    # Other pretrained weights in the same directory (paths.model_files, a dep of preprocess
    # and train): the model is trained again; the data is not downloaded again.
    from safetensors.torch import load_file, save_file

    weights = load_file(model / "model.safetensors")
    save_file({name: tensor * 1.01 for name, tensor in weights.items()}, model / "model.safetensors")
    assert stages_run(run(exp_run, repo, env)) == ["preprocess", "train", "evaluate"]
