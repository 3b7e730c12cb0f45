"""Stage 3: train the configured model with Lightning; best checkpoint by val macro-F1.

Writes ``<paths.models>/`` (model.ckpt, config.yaml, vocab.txt, mlflow_run.json) and
``<paths.reports>/training_curves.csv``; logs params, losses, metrics and artifacts to one
MLflow run. Under DDP only rank 0 writes files or talks to MLflow.

While it trains, the stage keeps a resume point in ``<paths.cache>/resume/<key>/`` (the
full state after the last completed epoch, the best checkpoint so far, the MLflow run id):
rerun after a crash, the same training picks up there, in the same MLflow run, and ends with
the weights an uninterrupted run would have. The directory is deleted when training ends;
what becomes of the resume points of trainings that died is in textclf.resume.
"""

from __future__ import annotations

import argparse
import csv
import gc
import hashlib
import io
import json
import os
import random
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection

from textclf.atomic import link_or_copy, staged_dir, write_text
from textclf.batched_logger import BatchedMLFlowLogger
from textclf.config import Config, flatten, load_params, to_dict
from textclf.data.datamodule import TextDataModule
from textclf.data.encoded import VOCAB_FILE, read_manifest
from textclf.distributed import launch_state_restorer
from textclf.errors import TextclfError
from textclf.models.classifier import NonFiniteLoss, TextClassifier
from textclf.outputs import CHECKPOINT_NAME, CURVES_FILE
from textclf.resources import check_devices, check_memory
from textclf.resume import (
    LAST_CHECKPOINT, RESUME_DIR, record_run, resume_lock, run_to_resume, sweep_abandoned,
)
from textclf.stages.cli import run_stage
from textclf.tracking import (
    CHECKPOINT_TAG, artifact_store_errors, check_tracking_uri, ensure_experiment, file_sha256, mask_userinfo, redact_config, redact_secrets,
    retry_if_locked, run_tags, tracking_uri, write_run_reference,
)

MONITOR = "val/f1_macro"
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

    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows)}  # in the resume checkpoint: the curves survive a crash

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


class EpochSeed(Callback):
    """Reseeds python, numpy and torch at the start of every training epoch from (seed, epoch,
    rank): dropout and every other draw of an epoch depend on nothing that came before it, so a
    run resumed at an epoch boundary goes on exactly as the uninterrupted run did. (Shuffling
    does not use these generators at all: the sampler seeds its own from (seed, epoch).)"""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        key = f"{self.seed}:{trainer.current_epoch}:{trainer.global_rank}".encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:4], "little")
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


class BestInMemoryIO(TorchCheckpointIO):
    """Checkpoint IO that keeps checkpoints bound for ``held_dir`` (the best-so-far model) in
    memory and writes them on ``flush()``: when training ends, and before any other checkpoint
    (a resume point) is written, so a resume point never names a best model that is not on disk.
    A model that improves every epoch then costs one write instead of one per epoch (a fasttext
    n-gram table is about 70 MB: a tenth of a second each). Only rank 0 saves, so only rank 0
    holds any.

    What is on disk always matches the last resume point: a run killed between two resume
    points restarts from the older one, with the best model as it was then."""

    def __init__(self, held_dir: Path) -> None:
        super().__init__()
        self.held_dir = held_dir.absolute()
        self._held: dict[Path, dict[str, Any]] = {}

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path).absolute()
        if target.parent != self.held_dir:
            self.flush()  # the best model this checkpoint's callback state names, on disk first
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        # Copied now: training goes on changing the weights in place.
        self._held[target] = apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().clone())

    def remove_checkpoint(self, path: Any) -> None:
        self._held.pop(Path(path).absolute(), None)
        super().remove_checkpoint(path)

    def flush(self) -> None:
        for target, checkpoint in self._held.items():
            super().save_checkpoint(checkpoint, target)  # Lightning writes it in one piece
        self._held.clear()


class ResumePoint(Checkpoint):
    """Saves the whole training state (weights, optimizer, schedule, loop counters, callback
    states) to ``path`` at the end of a training epoch, through a temporary file and a rename,
    so a crash at any moment leaves the last saved epoch's state behind.

    Saves at the first epoch end at least ``interval_s`` seconds after the previous save (or the
    start): 0 saves every epoch. The full state of a large embedding table is hundreds of MB,
    which would cost a model with seconds-long epochs more than the epoch itself.

    A Checkpoint subclass, so Lightning runs it after every other callback (the epoch's row of
    curves and the best-checkpoint bookkeeping are in the state it saves)."""

    def __init__(self, path: Path, interval_s: float) -> None:
        self.path = path
        self.interval_s = interval_s
        self._last_save = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_save = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = time.monotonic() - self._last_save >= self.interval_s
        # Saving is collective under DDP: every rank follows rank 0's clock.
        if not trainer.strategy.broadcast(due, src=0):
            return
        staged = self.path.with_name(f"{self.path.name}.partial")
        trainer.save_checkpoint(staged, weights_only=False)  # all DDP ranks call it; rank 0 writes
        if trainer.is_global_zero:
            flush = getattr(trainer.logger, "flush", None)
            if flush is not None:  # the run's metrics up to here are stored before the state is
                flush()
            os.replace(staged, self.path)
        self._last_save = time.monotonic()


def resume_dir(cfg: Config, manifest: dict[str, Any], uri: str) -> Path:
    """Where an unfinished training keeps its resume point: ``<paths.cache>/resume/<key>/``.

    The key hashes everything that shapes the result (the resolved config but its paths, the
    processed data's hash, the tracking store), so only the same training resumes from it.
    It lies outside the stage's DVC outputs, which DVC deletes before it reruns a stage."""
    identity = {
        "config": {key: value for key, value in to_dict(cfg).items() if key != "paths"},
        "data_hash": manifest["data_hash"],
        "tracking_uri": uri,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return (cfg.paths.cache / RESUME_DIR / key).absolute()


def discard_stale(resume: Path, uri: str, trainer: pl.Trainer) -> bool:
    """Deletes a resume point whose MLflow run is not in the store (mlflow.db replaced or
    deleted, the run deleted): resuming would finish a new run with no training history.
    Returns False (train from scratch). Ranks started by an external launcher (torchrun,
    SLURM) may have seen the point already: they stop, and the rerun starts afresh."""
    print(
        f"train: discarding the resume point {resume}: the MLflow run it names is not in "
        f"{mask_userinfo(uri)} (store replaced?); training from scratch",
        flush=True,
    )
    shutil.rmtree(resume, ignore_errors=True)
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if trainer.world_size > 1 and environment is not None and environment.creates_processes_externally:
        raise TextclfError(f"deleted the stale resume point {resume} after the other ranks started; rerun")
    return False


def train(
    cfg: Config,
    processed: Path,
    models_dir: Path,
    reports_dir: Path,
    tags: dict[str, str] | None = None,
    callbacks: list[Callback] | None = None,
) -> dict[str, Any]:
    """Trains, then moves the finished outputs into place; returns a summary of the run.

    A training that was killed resumes from its last completed epoch (see ``resume_dir``)
    and goes on logging to the same MLflow run. ``tags`` are added to the MLflow run next to
    the git commit, data hash and model name; ``callbacks`` (e.g. an Optuna pruning
    callback) run alongside the checkpointing ones."""
    uri = tracking_uri(cfg.tracking)
    check_tracking_uri(uri)  # fail fast, before any work
    check_devices(cfg.trainer)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    manifest = read_manifest(processed)
    check_memory(to_dict(cfg), manifest["vocab_size"], manifest["num_classes"])  # before the model is built
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

    resume = resume_dir(cfg, manifest, uri)
    last = resume / LAST_CHECKPOINT
    interval = cfg.train.resume_interval_s
    resume_points = [] if interval is None else [ResumePoint(last, interval)]
    checkpoint = ModelCheckpoint(
        dirpath=resume / "best",
        filename=CHECKPOINT_NAME,
        monitor=MONITOR,
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
        save_weights_only=True,  # the deliverable is the model, not the optimizer state (3x larger)
    )
    best_io = BestInMemoryIO(resume / "best")
    history = EpochHistory()
    restore_launch_state = launch_state_restorer()  # DDP leaves env vars and a process group behind
    trainer: pl.Trainer = instantiate(
        resolved["trainer"],
        logger=False,  # rank 0 gets its MLflow logger below, once the Trainer knows the ranks
        callbacks=[EpochSeed(cfg.seed), history, *(callbacks or []), checkpoint, *resume_points],
        default_root_dir=resume,
        use_distributed_sampler=False,  # the data module shards batches itself (see datamodule.py)
        enable_model_summary=False,
        plugins=[best_io],
    )
    # Every object alive now (imported modules, config, data) outlives the training. Frozen, the
    # garbage collector no longer walks them in its full collections: over the 700k objects of
    # torch, Lightning and MLflow each takes about 0.3 s, several per training. Unfrozen at the end.
    gc.freeze()
    try:
        with ExitStack() as held:
            # The global rank is certain only now (own DDP launcher, torchrun, SLURM): only rank 0
            # writes files and talks to MLflow; the other ranks never open the tracking store.
            if trainer.is_global_zero:
                sweep_abandoned(cfg, exclude=resume)  # other trainings that died: runs KILLED
                held.enter_context(resume_lock(resume))
            # Every rank decides alike: rank 0 changes nothing in ``resume`` before fit starts
            # (but to discard a stale resume point, which external launchers are told to rerun).
            resuming = last.is_file()
            if trainer.is_global_zero:
                from mlflow import MlflowClient

                experiment_id = ensure_experiment(uri, cfg.tracking.experiment_name)
                previous = run_to_resume(resume, uri, experiment_id)
                if resuming and previous is None:
                    resuming = discard_stale(resume, uri, trainer)
                client = MlflowClient(tracking_uri=uri)
                if previous is not None and not resuming:  # killed before its first epoch ended
                    if retry_if_locked(client.get_run, previous).info.status == "RUNNING":
                        retry_if_locked(client.set_terminated, previous, "KILLED")
                run_id = previous if resuming else None
                logger = BatchedMLFlowLogger(
                    experiment_name=cfg.tracking.experiment_name,
                    run_name=cfg.tracking.run_name,
                    tracking_uri=uri,
                    tags={**run_tags(resolved, manifest), **(tags or {})},
                    flush_every=cfg.tracking.flush_every,
                    flush_interval_s=cfg.tracking.flush_interval_s,
                    run_id=run_id,  # a resumed training goes on in its own run
                )
                trainer.logger = logger
                if run_id is None:
                    logger.log_hyperparams(redact_secrets(flatten(resolved)))
                else:
                    print(f"train: resuming from {last} (MLflow run {run_id})", flush=True)
                    retry_if_locked(client.update_run, run_id, status="RUNNING")  # KILLED by a sweep
                    retry_if_locked(logger.experiment.set_tag, run_id, "resumed", "true")
                record_run(resume, logger.run_id, logger.experiment_id, uri)
            try:
                # Only the pipeline's own file, in its own cache, is resumed from; it holds
                # plain tensors and containers, so it loads weights-only as well.
                gc.freeze()  # and what opening the MLflow run created
                trainer.fit(module, datamodule=datamodule, ckpt_path=last if resuming else None, weights_only=True)
            except Exception:
                # A failure (a diverged loss, a bug, a pruned trial) would recur on resume: only
                # an interrupt or a killed process leaves the resume point for the next run.
                if trainer.is_global_zero:
                    shutil.rmtree(resume, ignore_errors=True)
                raise
            if not trainer.is_global_zero:
                return {}
            best_io.flush()
            best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
            if best is None or not best.is_file():
                raise TextclfError(f"training produced no checkpoint in {resume} (no validation epoch ran?)")
            with staged_dir(models_dir) as staging:
                model_file = staging / f"{CHECKPOINT_NAME}.ckpt"
                link_or_copy(best, model_file)  # no copy: the resume directory holding `best` is deleted below
                # The config that made the checkpoint, secrets masked as in the run's params.
                config_file = staging / "config.yaml"
                config_file.write_text(yaml.safe_dump(redact_config(resolved), sort_keys=False), encoding="utf-8")
                shutil.copyfile(processed / VOCAB_FILE, staging / VOCAB_FILE)
                # Which checkpoint this run trained: evaluate scores only that one into the run.
                checkpoint_sha256 = file_sha256(model_file)
                retry_if_locked(logger.experiment.set_tag, logger.run_id, CHECKPOINT_TAG, checkpoint_sha256)
                write_run_reference(staging, logger.run_id, logger.experiment_id, checkpoint_sha256, uri)
                # Imported here, not at the top: it loads mlflow.pyfunc, which importing this module
                # (and ranks other than 0) should not pay for: 0.94 s cold, 0.03 s here, where the
                # run has already loaded MLflow.
                from textclf.serving import log_model

                # A full artifact store is named as such, not as a failure to write models_dir.
                # The run shows the config at its root; the weights and the vocabulary are stored
                # once, inside the logged model (runs:/<id>/model/artifacts/), not again beside it.
                with artifact_store_errors(retry_if_locked(logger.experiment.get_run, logger.run_id).info.artifact_uri):
                    retry_if_locked(logger.experiment.log_artifact, logger.run_id, str(config_file))
                    log_model(uri, logger.run_id, model_file, processed, resolved)  # the shippable pyfunc: runs:/<id>/model
                write_text(reports_dir / CURVES_FILE, history.to_csv())
            shutil.rmtree(resume, ignore_errors=True)  # finished: the next run starts afresh
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
        restore_launch_state()
        gc.unfreeze()


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
