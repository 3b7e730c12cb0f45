"""One place names the metrics (textclf.metrics): the schema, the checkpoint, the curves and
dvc.yaml's plot read it."""

from __future__ import annotations

from typing import get_args

import pytest
import yaml
from mlflow import MlflowClient

from textclf import metrics, plots
from textclf.errors import TextclfError
from textclf.stages.download import download
from textclf.stages.preprocess import preprocess
from textclf.stages.train import train

from conftest import REPO_ROOT


def test_train_monitor_accepts_exactly_the_metrics_with_a_mode(tiny_config) -> None:
    assert get_args(metrics.MonitorName) == tuple(metrics.MODES)
    assert tiny_config().train.monitor == metrics.VAL_F1_MACRO  # conf/config.yaml's default
    with pytest.raises(TextclfError, match=r"train\.monitor") as refused:
        tiny_config("train.monitor=val/f2")
    assert "\n" not in str(refused.value)


def test_the_checkpoint_is_the_best_epoch_by_train_monitor_in_its_direction(tiny_config, mlflow_uri: str) -> None:
    cfg = tiny_config("train.monitor=val/loss", "trainer.max_epochs=3")
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
    summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    losses = [m.value for m in MlflowClient(mlflow_uri).get_metric_history(summary.run_id, metrics.VAL_LOSS)]
    assert summary.monitor == "val/loss" and len(losses) == 3
    assert summary.best_score == pytest.approx(min(losses)) and metrics.best("val/loss", losses) == min(losses)


def test_the_dvc_training_curves_plot_names_the_columns_train_writes() -> None:
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    (plot,) = [
        p["${paths.reports}/training_curves.csv"]
        for p in pipeline["plots"]
        if isinstance(p, dict) and "${paths.reports}/training_curves.csv" in p
    ]
    assert [plot["x"], *plot["y"]] == [metrics.CURVE_COLUMNS[0], *metrics.CURVE_COLUMNS[2:]]
    assert set(plots.CURVE_PANELS) == set(metrics.CURVES)  # the MLflow PNG draws every curve
    assert "train.monitor" in pipeline["stages"]["train"]["params"]
