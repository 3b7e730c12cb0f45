"""BatchedMLFlowLogger: per-step values reach MLflow in few writes, all of them, in order."""

from __future__ import annotations

from mlflow import MlflowClient

from textclf.batched_logger import BatchedMLFlowLogger
from textclf.tracking import ensure_experiment


def make_logger(uri: str, flush_every: int, flush_interval_s: float = 3600.0) -> BatchedMLFlowLogger:
    ensure_experiment(uri, "batched")
    return BatchedMLFlowLogger(
        experiment_name="batched", tracking_uri=uri, flush_every=flush_every, flush_interval_s=flush_interval_s
    )


def history(uri: str, logger: BatchedMLFlowLogger, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(logger.run_id, key)]


def test_values_are_held_until_a_batch_is_full_then_written_together(mlflow_uri: str) -> None:
    logger = make_logger(mlflow_uri, flush_every=4)
    for step in range(3):
        logger.log_metrics({"train/loss_step": 1.0 / (step + 1)}, step=step)
    assert history(mlflow_uri, logger, "train/loss_step") == []  # 3 pending < 4
    logger.log_metrics({"train/loss_step": 0.25, "epoch": 0}, step=3)  # 5 pending: one write
    assert history(mlflow_uri, logger, "train/loss_step") == [(0, 1.0), (1, 0.5), (2, 1 / 3), (3, 0.25)]
    assert history(mlflow_uri, logger, "epoch") == [(3, 0.0)]


def test_the_rest_is_written_when_the_run_ends_and_the_run_is_finished(mlflow_uri: str) -> None:
    logger = make_logger(mlflow_uri, flush_every=1000)
    for step in range(2500):  # more than one request may carry (1000 values)
        logger.log_metrics({"train/loss_step": float(step)}, step=step)
    logger.finalize("success")
    values = history(mlflow_uri, logger, "train/loss_step")
    assert [step for step, _ in values] == list(range(2500))
    assert MlflowClient(mlflow_uri).get_run(logger.run_id).info.status == "FINISHED"


def test_a_long_pause_flushes_so_the_ui_follows_a_run(mlflow_uri: str) -> None:
    logger = make_logger(mlflow_uri, flush_every=1000, flush_interval_s=1e-9)  # every call is "late"
    logger.log_metrics({"val/f1_macro": 0.5}, step=7)
    assert history(mlflow_uri, logger, "val/f1_macro") == [(7, 0.5)]
