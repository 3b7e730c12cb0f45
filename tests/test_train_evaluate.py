"""The train and evaluate functions on the tiny corpus, with a throwaway MLflow store."""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from tiny_run import TEXTS

from textclf.data.encoded import read_manifest
from textclf.errors import TextclfError
from textclf.stages.download import download
from textclf.stages.evaluate import evaluate
from textclf.stages.preprocess import preprocess
from textclf.stages.train import LAST_CHECKPOINT, BestInMemoryIO, resume_dir, run_name, train
from textclf.tracking import tracking_uri

METRIC_KEYS = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "loss")


@pytest.fixture
def prepared(tiny_config):
    """A config whose processed data exists (download + preprocess into tmp_path)."""

    def build(*overrides: str, model: str = "fasttext"):
        cfg = tiny_config(*overrides, model=model)
        download(cfg, cfg.paths.raw, progress=False)
        preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
        return cfg

    return build


def test_train_then_evaluate_fills_one_mlflow_run(prepared, mlflow_uri: str) -> None:
    cfg = prepared("trainer.max_epochs=3")
    summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    assert gc.get_freeze_count() == 0  # the objects frozen while training are collectable again
    models = cfg.paths.models
    assert sorted(p.name for p in models.iterdir()) == ["config.yaml", "mlflow_run.json", "model.ckpt", "vocab.txt"]
    assert not models.with_name("models.partial").exists()
    curves = (cfg.paths.reports / "training_curves.csv").read_text().splitlines()
    assert curves[0].startswith("epoch,step,train_loss,val_loss") and len(curves) == 1 + 3

    metrics = evaluate(cfg, cfg.paths.processed, models, cfg.paths.reports)
    written = json.loads((cfg.paths.reports / "metrics.json").read_text())
    assert written == metrics
    for key in METRIC_KEYS[:-1]:
        assert 0.0 <= written[key] <= 1.0
    assert written["loss"] >= 0.0
    assert 0.0 <= written["ece_uncalibrated"] <= 1.0 and 0.0 <= written["ece_calibrated"] <= 1.0
    assert written["accuracy"] > 0.6  # three easily separated groups
    per_class = json.loads((cfg.paths.reports / "per_class.json").read_text())
    assert set(per_class) == {"rec.boats", "sci.orbits", "talk.bread"}
    assert sum(row["support"] for row in per_class.values()) == 18
    assert (cfg.paths.reports / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert len((cfg.paths.reports / "confusion.csv").read_text().splitlines()) == 1 + 18
    f1_rows = (cfg.paths.reports / "per_class_f1.csv").read_text().splitlines()
    assert f1_rows[0] == "class,f1"
    assert {row.split(",")[0]: float(row.split(",")[1]) for row in f1_rows[1:]} == {
        name: row["f1"] for name, row in per_class.items()
    }

    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == summary.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params["model._target_"] == "textclf.models.fasttext.FastText"
    assert run.data.params["optimizer.lr"] == "0.05"
    assert run.data.params["trainer.max_epochs"] == "3"
    assert len(run.data.tags["data_hash"]) == 64
    assert "mlflow.source.git.commit" in run.data.tags
    steps = client.get_metric_history(run.info.run_id, "train/loss_step")
    # 36 training docs / batch 8 = 5 steps per epoch; the config logs every 10th step
    assert [m.step for m in steps] == [9] and cfg.trainer.log_every_n_steps == 10
    assert len(client.get_metric_history(run.info.run_id, "train/loss_epoch")) == 3
    assert len(client.get_metric_history(run.info.run_id, "val/f1_macro")) == 3
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 3
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.metrics["test/ece_calibrated"] == pytest.approx(metrics["ece_calibrated"])
    assert run.data.metrics["val/temperature"] == metrics["temperature"] > 0  # fitted on validation
    artifacts = {a.path for folder in (None, "evaluation") for a in client.list_artifacts(run.info.run_id, folder)}
    # The weights are stored once, in the logged model (tests/test_serving.py), not in the run too.
    assert artifacts == {
        "config.yaml",
        "evaluation",
        "evaluation/metrics.json",
        "evaluation/per_class.json",
        "evaluation/confusion.png",
        "evaluation/reliability.png",
        "evaluation/report.html",
        "evaluation/top_features.json",
        "evaluation/per_class_f1.png",
        "evaluation/training_curves.png",
    }


@pytest.mark.parametrize("model", ["lstm", "transformer"])
def test_sequence_models_train_and_evaluate(prepared, mlflow_uri: str, model: str) -> None:
    cfg = prepared(model=model)
    train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    metrics = evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_the_same_seed_trains_the_same_model(prepared, mlflow_uri: str) -> None:
    cfg = prepared("seed=0")
    first = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    again = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    assert first.best_score == again.best_score
    assert first.run_id != again.run_id  # one MLflow run per training


def test_two_seed_0_trainings_get_different_run_names_that_name_the_model(prepared, mlflow_uri: str) -> None:
    cfg = prepared("seed=0", "trainer.max_epochs=1")
    first, again = (train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports) for _ in range(2))
    client = MlflowClient(mlflow_uri)
    names = [client.get_run(summary.run_id).info.run_name for summary in (first, again)]
    assert names[0] != names[1] and all(name.startswith("fasttext-") for name in names), names


def test_a_run_is_named_by_its_model_what_started_it_and_a_random_id(
    tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    lstm = tiny_config(model="lstm")
    assert re.fullmatch(r"lstm-[0-9a-f]{6}", run_name(lstm, {}))
    assert re.fullmatch(r"lstm-job3-[0-9a-f]{6}", run_name(lstm, {"hydra.job.num": "3"}))
    assert re.fullmatch(r"lstm-fasttext-trial-7-[0-9a-f]{6}", run_name(lstm, {"mlflow.runName": "fasttext-trial-7"}))
    monkeypatch.setenv("DVC_EXP_NAME", "jaded-bass")  # set by `dvc exp run` for its stages
    assert re.fullmatch(r"lstm-jaded-bass-[0-9a-f]{6}", run_name(lstm, {"hydra.job.num": "3"}))
    assert run_name(tiny_config("tracking.run_name=mine"), {"hydra.job.num": "3"}) == "mine"  # set: it wins


def test_train_delivers_the_checkpoint_and_evaluate_ships_the_model_into_the_same_run(
    prepared, mlflow_uri: str
) -> None:
    import mlflow

    cfg = prepared("trainer.max_epochs=3")
    summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    client = MlflowClient(mlflow_uri)
    experiment = client.get_run(summary.run_id).info.experiment_id

    def logged_models() -> list:
        return client.search_logged_models([experiment], filter_string=f"source_run_id = '{summary.run_id}'")

    assert (cfg.paths.models / "model.ckpt").is_file() and logged_models() == []  # train ships nothing
    evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    (model,) = logged_models()
    assert model.name == "model"
    served = mlflow.pyfunc.load_model(f"runs:/{summary.run_id}/model")  # $MLFLOW_TRACKING_URI: the store
    assert served.predict(pd.DataFrame({"text": list(TEXTS.values())}))["label"].tolist() == list(TEXTS)


def test_evaluate_without_a_checkpoint_names_it(prepared, mlflow_uri: str) -> None:
    cfg = prepared()
    with pytest.raises(TextclfError, match="model.ckpt"):
        evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    assert not cfg.paths.reports.exists()


def test_train_without_processed_data_names_it(tiny_config, mlflow_uri: str, tmp_path: Path) -> None:
    cfg = tiny_config()
    with pytest.raises(TextclfError, match="processed data not found"):
        train(cfg, tmp_path / "missing", cfg.paths.models, cfg.paths.reports)
    assert not cfg.paths.models.exists()


class ResumePointWatcher(pl.Callback):
    """Notes, at every epoch end after the resume-point callback ran, whether a resume point exists."""

    def __init__(self, last_checkpoint: Path) -> None:
        self.last_checkpoint = last_checkpoint
        self.seen: list[bool] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # An epoch's validation ends before its own resume point is due, after the previous one's.
        if not trainer.sanity_checking:
            self.seen.append(self.last_checkpoint.is_file())


@pytest.mark.parametrize(("interval", "expected"), [("0", [False, True, True]), ("3600", [False, False, False])])
def test_resume_points_are_written_at_most_every_resume_interval(prepared, mlflow_uri: str, interval, expected) -> None:
    cfg = prepared("trainer.max_epochs=3", f"train.resume_interval_s={interval}")
    uri = tracking_uri(cfg.tracking)
    last = resume_dir(cfg, read_manifest(cfg.paths.processed), uri) / LAST_CHECKPOINT
    watcher = ResumePointWatcher(last)
    train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports, callbacks=[watcher])
    assert watcher.seen == expected
    assert not last.exists()  # a finished training leaves no resume point behind


def test_the_held_best_model_is_on_disk_before_any_other_checkpoint_is(tmp_path: Path) -> None:
    best, last = tmp_path / "best" / "model.ckpt", tmp_path / "last.ckpt"
    checkpoint_io = BestInMemoryIO(best.parent)
    weights = {"weight": torch.ones(3)}
    checkpoint_io.save_checkpoint(weights, best)
    weights["weight"].zero_()  # training goes on changing the weights in place
    assert not best.exists()  # held in memory
    checkpoint_io.save_checkpoint({"epoch": 1}, last)  # a resume point names the best model: written first
    assert torch.load(best, weights_only=True)["weight"].tolist() == [1.0, 1.0, 1.0]
    assert last.is_file()


@pytest.mark.parametrize("every", [1, 4])
def test_step_losses_are_logged_every_n_steps_and_the_epoch_mean_counts_every_step(
    prepared, mlflow_uri: str, every: int
) -> None:
    # 36 training docs in batches of 4: 9 equal batches an epoch, so the epoch's mean loss is
    # the plain mean of its steps' losses.
    cfg = prepared("trainer.max_epochs=2", "train.batch_size=4", f"trainer.log_every_n_steps={every}")
    run_id = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports).run_id
    client = MlflowClient(mlflow_uri)
    steps = client.get_metric_history(run_id, "train/loss_step")
    assert [m.step for m in steps] == [s for s in range(18) if (s + 1) % every == 0]
    epochs = sorted(client.get_metric_history(run_id, "train/loss_epoch"), key=lambda m: m.step)
    assert [m.step for m in epochs] == [8, 17]
    if every == 1:
        losses = [m.value for m in sorted(steps, key=lambda m: m.step)]
        for epoch, metric in enumerate(epochs):
            assert metric.value == pytest.approx(sum(losses[9 * epoch : 9 * epoch + 9]) / 9, rel=1e-5)
    curves = (cfg.paths.reports / "training_curves.csv").read_text().splitlines()
    assert [float(row.split(",")[2]) for row in curves[1:]] == pytest.approx([m.value for m in epochs], abs=1e-6)
