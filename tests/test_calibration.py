"""Calibrated probabilities (textclf.calibration): a temperature fitted on the validation split
only, the expected calibration error before and after it in metrics.json and the MLflow run,
the reliability diagram (PNG and DVC plot data), and the shipped model returning evaluate's
calibrated probabilities."""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient
from torch.nn import functional as F

from textclf import plots
from textclf.calibration import (
    ECE_BINS,
    RELIABILITY_COLUMNS,
    calibrated,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
    reliability_csv,
)
from textclf.config import Config, validate
from textclf.data.datamodule import TextDataModule, tokens_kept
from textclf.errors import TextclfError
from textclf.models.checkpoint import load_checkpoint
from textclf.params import compose
from textclf.serving import CALIBRATION_FILE, read_temperature
from textclf.stages.download import download
from textclf.stages.evaluate import RELIABILITY_CSVS, RELIABILITY_PNG, calibration_temperature, evaluate, predict
from textclf.stages.preprocess import preprocess
from textclf.stages.train import train
from textclf.tracking import mlflow_tracking_uri

from conftest import REPO_ROOT, TINY_MODELS
from corpora import texts, write_table

TEST_PAIRS = texts(per_class=4, seed=7)  # 12 test documents, in the order evaluate scores them
CALIBRATION_KEYS = ("ece_uncalibrated", "ece_calibrated", "loss_calibrated", "temperature")


def sampled(num: int, classes: int, scale: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C) * scale, labels (N,)) with labels drawn from softmax(logits): calibrated
    at scale 1, overconfident above it, underconfident below."""
    generator = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(num, classes, generator=generator)
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
    return scale * logits, labels


@pytest.mark.parametrize("scale", [3.0, 0.5])
def test_the_temperature_undoes_an_over_or_underconfident_scale_and_lowers_the_nll(scale: float) -> None:
    logits, labels = sampled(4000, 5, scale)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(scale, rel=0.1)  # T > 1 for the overconfident model
    assert (temperature > 1) == (scale > 1)
    assert nll(logits, labels, temperature) < nll(logits, labels, 1.0) - 0.01
    assert fit_temperature(logits.clone(), labels.clone()) == temperature  # deterministic


def test_the_fitted_temperature_is_the_minimum_of_the_validation_nll() -> None:
    logits, labels = sampled(500, 4, 2.0, seed=3)
    temperature = fit_temperature(logits, labels)
    grid = [math.exp(u / 100) for u in range(-300, 301)]  # 0.05 .. 20
    assert nll(logits, labels, temperature) <= min(nll(logits, labels, t) for t in grid) + 1e-9


def test_calibrated_probabilities_sum_to_one_and_keep_every_prediction() -> None:
    logits, _ = sampled(200, 6, 4.0)
    for temperature in (0.3, 1.0, 2.7):
        probabilities = calibrated(logits, temperature)
        torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(200))
        assert torch.equal(probabilities.argmax(dim=1), logits.argmax(dim=1))
    assert torch.equal(calibrated(logits, 1.0), logits.softmax(dim=1))


def test_the_reliability_bins_are_the_ones_the_ece_is_computed_over() -> None:
    logits, labels = sampled(600, 3, 6.0, seed=1)
    logits[:20, 0] = 200.0  # a top probability of exactly 1.0: torchmetrics' last bin
    probabilities = logits.softmax(dim=1)
    rows = reliability_bins(probabilities, labels)
    assert rows[-1]["lower"] == rows[-1]["upper"] == 1.0 and rows[-1]["count"] >= 20
    assert len(rows) <= ECE_BINS + 1 and sum(row["count"] for row in rows) == 600
    gap = sum(row["count"] / 600 * abs(row["accuracy"] - row["confidence"]) for row in rows)
    assert gap == pytest.approx(expected_calibration_error(probabilities, labels), abs=1e-6)
    text = reliability_csv(rows)
    assert text.splitlines()[0] == ",".join(RELIABILITY_COLUMNS)
    assert len(text.splitlines()) == 1 + len(rows)


def test_the_reliability_diagram_draws_both_curves_and_the_diagonal() -> None:
    logits, labels = sampled(300, 3, 3.0)
    before = reliability_bins(logits.softmax(dim=1), labels)
    after = reliability_bins(calibrated(logits, 3.0), labels)
    figure = plots.reliability(before, after, 0.12, 0.02, 3.0)
    (ax,) = figure.axes
    lines = ax.get_lines()
    assert len(lines) == 3 and list(lines[0].get_xdata()) == [0, 1]
    assert list(lines[1].get_ydata()) == [row["accuracy"] for row in before]
    assert [text.get_text() for text in ax.get_legend().get_texts()][1:] == [
        "uncalibrated (ECE 0.120)",
        "T = 3 (ECE 0.020)",
    ]


def test_calibration_method_is_validated_with_the_key_named() -> None:
    with pytest.raises(TextclfError, match="calibration.method"):
        validate(compose(["calibration.method=platt"], root=REPO_ROOT))


@pytest.mark.parametrize(
    "content", ['{"temperature": -1}', '{"temperature": "2"}', '{"t": 2}', "[", '{"temperature": true}']
)
def test_a_shipped_temperature_that_is_not_a_positive_number_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / CALIBRATION_FILE
    path.write_text(content)
    with pytest.raises(TextclfError, match=f"{CALIBRATION_FILE}: refusing to load"):
        read_temperature(path)
    path.write_text('{"temperature": 1.5}')
    assert read_temperature(path) == 1.5


@dataclass(frozen=True)
class Evaluated:
    cfg: Config
    run_id: str
    metrics: dict[str, float]


def trained_and_evaluated(root: Path, corpus: tuple[Path, Path], *extra: str) -> Evaluated:
    """The real config shrunk to a tiny table corpus (fasttext, 3 epochs) under ``root``, with
    a store of its own: downloaded, preprocessed, trained and evaluated."""
    train_table, test_table = corpus
    paths = [f"paths.{name}={root / name}" for name in ("raw", "processed", "models", "reports", "cache")]
    overrides = [
        "model=fasttext",
        *TINY_MODELS["fasttext"],
        "data=table",
        f"data.train={train_table}",
        f"data.test={test_table}",
        "data.val_fraction=0.25",
        "encoder.min_freq=1",
        "optimizer.lr=0.05",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
        "train.batch_size=8",
        "train.eval_batch_size=16",
        "train.resume_interval_s=null",
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        *paths,
        *extra,
    ]
    cfg = validate(compose(overrides, root=REPO_ROOT))
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed, parallel=False)
    summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    metrics = evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    return Evaluated(cfg, summary.run_id, metrics)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train table, test table): 3 classes, 16 and 4 documents each."""
    root = tmp_path_factory.mktemp("corpus")
    return write_table(root / "train.csv", texts(per_class=16)), write_table(root / "test.csv", TEST_PAIRS)


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory: pytest.TempPathFactory, corpus) -> Evaluated:
    return trained_and_evaluated(tmp_path_factory.mktemp("calibrated"), corpus)


def logits_of(cfg: Config, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate's (logits (N, C), labels (N,)) of ``split`` from the run's best checkpoint."""
    module = load_checkpoint(cfg.paths.models / "model.ckpt")
    batch = cfg.train.eval_batch_size
    max_len = tokens_kept(module.hparams.model)
    datamodule = TextDataModule(cfg.paths.processed, batch_size=batch, eval_batch_size=batch, max_len=max_len)
    return predict(module, datamodule, split=split)


def served_probabilities(cfg: Config, run_id: str) -> pd.DataFrame:
    with mlflow_tracking_uri(cfg.tracking.uri):
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    return model.predict(pd.DataFrame({"text": [text for _, text in TEST_PAIRS]}))


def test_evaluate_reports_the_temperature_fitted_on_validation_and_the_ece_before_and_after(
    calibrated_run: Evaluated,
) -> None:
    cfg, metrics = calibrated_run.cfg, calibrated_run.metrics
    assert json.loads((cfg.paths.reports / "metrics.json").read_text())["temperature"] == metrics["temperature"]
    temperature = metrics["temperature"]
    assert temperature == round(fit_temperature(*logits_of(cfg, "val")), 6)  # the validation split's
    logits, labels = logits_of(cfg, "test")
    assert metrics["ece_uncalibrated"] == pytest.approx(
        expected_calibration_error(logits.softmax(dim=1), labels), abs=1e-6
    )
    probabilities = calibrated(logits, temperature)
    assert metrics["ece_calibrated"] == pytest.approx(expected_calibration_error(probabilities, labels), abs=1e-6)
    assert metrics["loss_calibrated"] == pytest.approx(float(F.cross_entropy(logits / temperature, labels)), abs=1e-6)

    client = MlflowClient(cfg.tracking.uri)
    logged = client.get_run(calibrated_run.run_id).data.metrics
    assert logged["val/temperature"] == temperature  # chosen on validation, so not a test/ metric
    assert "test/temperature" not in logged
    for key in CALIBRATION_KEYS[:-1]:
        assert logged[f"test/{key}"] == pytest.approx(metrics[key])
    artifacts = {a.path for a in client.list_artifacts(calibrated_run.run_id, "evaluation")}
    assert f"evaluation/{RELIABILITY_PNG}" in artifacts


def test_the_temperature_never_reads_the_test_split(calibrated_run: Evaluated, tmp_path: Path) -> None:
    """Fitted again with the test split gone from the processed data, the temperature is the one
    evaluate recorded: the test split cannot have chosen it."""
    cfg = calibrated_run.cfg
    processed = Path(shutil.copytree(cfg.paths.processed, tmp_path / "processed"))
    (processed / "test.pt").unlink()
    module = load_checkpoint(cfg.paths.models / "model.ckpt")
    max_len = tokens_kept(module.hparams.model)
    datamodule = TextDataModule(processed, batch_size=16, eval_batch_size=16, max_len=max_len)
    assert calibration_temperature(cfg, module, datamodule) == calibrated_run.metrics["temperature"]
    assert set(datamodule.splits) == {"val"}


def test_evaluate_writes_the_reliability_plot_data_and_png_it_declares(calibrated_run: Evaluated) -> None:
    reports = calibrated_run.cfg.paths.reports
    for name in RELIABILITY_CSVS.values():
        rows = list(csv.DictReader((reports / name).open()))
        assert tuple(rows[0]) == RELIABILITY_COLUMNS
        assert sum(int(row["count"]) for row in rows) == len(TEST_PAIRS)
        assert all(0 <= float(row["accuracy"]) <= 1 and 0 < float(row["confidence"]) <= 1 for row in rows)
    assert (reports / RELIABILITY_PNG).read_bytes()[:4] == b"\x89PNG"
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    outs = pipeline["stages"]["evaluate"]["outs"]
    assert {f"${{paths.reports}}/{name}" for name in (*RELIABILITY_CSVS.values(), RELIABILITY_PNG)} <= set(outs)
    (plot,) = [p for p in pipeline["plots"] if isinstance(p, dict) and "Test reliability (calibration)" in p]
    spec = plot["Test reliability (calibration)"]
    assert spec["x"] == "confidence"
    assert spec["y"] == {f"${{paths.reports}}/{name}": "accuracy" for name in RELIABILITY_CSVS.values()}
    assert "calibration" in pipeline["stages"]["evaluate"]["params"]


def test_the_shipped_model_returns_evaluates_calibrated_probabilities(calibrated_run: Evaluated) -> None:
    cfg, temperature = calibrated_run.cfg, calibrated_run.metrics["temperature"]
    assert abs(temperature - 1) > 1e-3  # else this test could not tell calibrated from not
    logits, _ = logits_of(cfg, "test")
    expected = calibrated(logits, temperature).double().numpy()  # (N, C), in TEST_PAIRS' order
    frame = served_probabilities(cfg, calibrated_run.run_id)
    labels = json.loads((cfg.paths.processed / "labels.json").read_text())
    served = frame[labels].to_numpy()
    assert served == pytest.approx(expected, abs=1e-5)
    assert served.sum(axis=1) == pytest.approx([1.0] * len(TEST_PAIRS), abs=1e-5)
    assert served != pytest.approx(logits.softmax(dim=1).double().numpy(), abs=1e-4)


def test_with_calibration_off_the_temperature_is_one_and_the_probabilities_are_the_softmax(
    tmp_path: Path, corpus
) -> None:
    run = trained_and_evaluated(tmp_path, corpus, "calibration.method=none")
    metrics = run.metrics
    assert metrics["temperature"] == 1.0
    assert metrics["ece_calibrated"] == metrics["ece_uncalibrated"]
    assert metrics["loss_calibrated"] == metrics["loss"]
    reports = run.cfg.paths.reports
    assert (reports / RELIABILITY_CSVS["calibrated"]).read_text() == (
        reports / RELIABILITY_CSVS["uncalibrated"]
    ).read_text()
    logits, _ = logits_of(run.cfg, "test")
    labels = json.loads((run.cfg.paths.processed / "labels.json").read_text())
    served = served_probabilities(run.cfg, run.run_id)[labels].to_numpy()
    assert served == pytest.approx(logits.softmax(dim=1).double().numpy(), abs=1e-5)
