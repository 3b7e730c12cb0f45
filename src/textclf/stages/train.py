"""Stage 3: train the configured model with Lightning; best checkpoint by val macro-F1.

Writes ``<paths.models>/`` (model.ckpt, config.yaml, vocab.txt, mlflow_run.json) and
``<paths.reports>/training_curves.csv``; logs params, losses, metrics and artifacts to one
MLflow run. Under DDP only rank 0 writes files or talks to MLflow.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from textclf.atomic import write_text
from textclf.batched_logger import BatchedMLFlowLogger
from textclf.config import Config, flatten, load_params, to_dict
from textclf.data.datamodule import TextDataModule
from textclf.data.encoded import VOCAB_FILE, read_manifest
from textclf.distributed import launch_state_restorer
from textclf.errors import TextclfError
from textclf.models.classifier import NonFiniteLoss, TextClassifier
from textclf.stages.cli import run_stage
from textclf.tracking import (
    check_tracking_uri, ensure_experiment, redact_secrets, run_tags, tracking_uri, write_run_reference,
)

CHECKPOINT_NAME = "model"  # -> model.ckpt
MONITOR = "val/f1_macro"
CURVES_FILE = "training_curves.csv"
CURVE_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_accuracy", "val_f1_macro")


class EpochHistory(Callback):
    """Keeps one row of losses and validation metrics per epoch (for the DVC plot)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after the epoch's validation, so both losses are in callback_metrics.
        metrics = trainer.callback_metrics
        names = {
            "train_loss": "train/loss_epoch",
            "val_loss": "val/loss",
            "val_accuracy": "val/accuracy",
            "val_f1_macro": "val/f1_macro",
        }
        row: dict[str, float] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for column, key in names.items():
            if key in metrics:
                row[column] = round(float(metrics[key]), 6)
        self.rows.append(row)

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CURVE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()


def _staging_dir(models_dir: Path) -> Path:
    # One fixed name, so every DDP rank agrees on the checkpoint directory.
    return models_dir.with_name(f"{models_dir.name}.partial")


def train(
    cfg: Config,
    processed: Path,
    models_dir: Path,
    reports_dir: Path,
    tags: dict[str, str] | None = None,
    callbacks: list[Callback] | None = None,
) -> dict[str, Any]:
    """Trains, then moves the finished outputs into place; returns a summary of the run.

    ``tags`` are added to the MLflow run next to the git commit, data hash and model name;
    ``callbacks`` (e.g. an Optuna pruning callback) run alongside the checkpointing ones."""
    check_tracking_uri(tracking_uri(cfg.tracking))  # fail fast, before any work
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    manifest = read_manifest(processed)
    datamodule = TextDataModule(
        processed,
        batch_size=cfg.train.batch_size,
        eval_batch_size=cfg.train.eval_batch_size,
        num_workers=cfg.train.num_workers,
        max_len=cfg.model.get("max_len"),
        seed=cfg.seed,
        length_buckets=cfg.train.length_buckets,
    )
    resolved = to_dict(cfg)
    module = TextClassifier(
        model=resolved["model"],
        optimizer=resolved["optimizer"],
        scheduler=resolved["scheduler"],
        vocab_size=datamodule.vocab_size,
        num_classes=datamodule.num_classes,
        label_smoothing=cfg.train.label_smoothing,
    )

    uri = tracking_uri(cfg.tracking)
    staging = _staging_dir(models_dir)
    checkpoint = ModelCheckpoint(
        dirpath=staging,
        filename=CHECKPOINT_NAME,
        monitor=MONITOR,
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
        save_weights_only=True,  # the deliverable is the model, not the optimizer state (3x larger)
    )
    history = EpochHistory()
    restore_launch_state = launch_state_restorer()  # DDP leaves env vars and a process group behind
    trainer: pl.Trainer = instantiate(
        resolved["trainer"],
        logger=False,  # rank 0 gets its MLflow logger below, once the Trainer knows the ranks
        callbacks=[checkpoint, history, *(callbacks or [])],
        default_root_dir=staging,
        use_distributed_sampler=False,  # the data module shards batches itself (see datamodule.py)
        enable_model_summary=False,
    )
    try:
        # The global rank is certain only now (own DDP launcher, torchrun, SLURM): only rank 0
        # writes files and talks to MLflow; the other ranks never open the tracking store.
        if trainer.is_global_zero:
            ensure_experiment(uri, cfg.tracking.experiment_name)
            shutil.rmtree(staging, ignore_errors=True)
            logger = BatchedMLFlowLogger(
                experiment_name=cfg.tracking.experiment_name,
                run_name=cfg.tracking.run_name,
                tracking_uri=uri,
                tags={**run_tags(resolved, manifest), **(tags or {})},
                flush_every=cfg.tracking.flush_every,
                flush_interval_s=cfg.tracking.flush_interval_s,
            )
            trainer.logger = logger
            logger.log_hyperparams(redact_secrets(flatten(resolved)))
        trainer.fit(module, datamodule=datamodule)
        if not trainer.is_global_zero:
            return {}
        best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
        if best is None or not best.is_file():
            raise TextclfError(f"training produced no checkpoint in {staging} (no validation epoch ran?)")
        (staging / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
        shutil.copyfile(processed / VOCAB_FILE, staging / VOCAB_FILE)
        experiment_id = logger.experiment_id
        write_run_reference(staging, logger.run_id, experiment_id)
        for name in (best.name, "config.yaml", VOCAB_FILE):
            logger.experiment.log_artifact(logger.run_id, str(staging / name), artifact_path="checkpoint")
        from textclf.serving import log_model  # here: it imports mlflow.pyfunc (about a second)

        log_model(uri, logger.run_id, best, processed, resolved)  # the shippable pyfunc: runs:/<id>/model
        write_text(reports_dir / CURVES_FILE, history.to_csv())
        if models_dir.exists():
            shutil.rmtree(models_dir)
        staging.rename(models_dir)
        return {
            "run_id": logger.run_id,
            "best_val_f1_macro": float(checkpoint.best_model_score),
            "epochs": trainer.current_epoch,
        }
    except NonFiniteLoss as error:
        kept = (models_dir / f"{CHECKPOINT_NAME}.ckpt").is_file()
        raise TextclfError(
            f"{error}; training stopped, "
            + (f"{models_dir} keeps the last good model" if kept else f"no model written to {models_dir}")
        ) from error
    finally:
        if trainer.is_global_zero:
            shutil.rmtree(staging, ignore_errors=True)
        restore_launch_state()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)

    def stage() -> None:
        cfg = load_params(args.params)
        summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
        if summary:
            print(f"train: {summary}")

    run_stage("train", stage)


if __name__ == "__main__":
    main()
