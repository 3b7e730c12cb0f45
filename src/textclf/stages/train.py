"""Stage 3: train the configured model with Lightning; best checkpoint by ``train.monitor``.

Writes ``<paths.models>/`` (model.ckpt, config.yaml, vocab.txt, mlflow_run.json) and
``<paths.reports>/training_curves.csv``; logs params, losses, metrics and the config to one
MLflow run, which evaluate completes with the test metrics and the shipped model. Under DDP
only rank 0 writes files or talks to MLflow.

While it trains, the stage keeps a resume point in ``<paths.cache>/resume/<key>/`` (the
full state after the last completed epoch, the best checkpoint so far, the MLflow run id):
rerun after a crash, the same training picks up there, in the same MLflow run, and ends with
the weights an uninterrupted run would have. The directory is deleted when training ends;
what becomes of the resume points of trainings that died is in textclf.resume.

    train(cfg, ...)            seed, then build the data module and the LightningModule
      build_trainer            the Trainer with its checkpointing callbacks (Training)
      open_run                 rank 0: the MLflow run, new or the one a resume point names
      fit_with_resume          fit, from the resume point if there is one
      deliver_outputs          rank 0: models/ and the curves, in place; -> TrainSummary
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from textclf import metrics
from textclf.atomic import link_or_copy, staged_dir, write_text
from textclf.batched_logger import BatchedMLFlowLogger
from textclf.callbacks import BestInMemoryIO, EpochHistory, EpochSeed, ResumePoint
from textclf.config import MODEL_SECTIONS, Config, flatten, load_params, to_dict
from textclf.data.datamodule import TextDataModule, tokens_kept
from textclf.data.encoded import VOCAB_FILE, read_manifest
from textclf.distributed import launch_state_restorer
from textclf.errors import TextclfError, run_cli
from textclf.hashing import file_sha256
from textclf.models.classifier import NonFiniteLoss, TextClassifier
from textclf.models.embeddings import EMBEDDINGS_DIR
from textclf.outputs import CHECKPOINT_NAME, CURVES_FILE
from textclf.provenance import run_tags
from textclf.redact import mask_userinfo, redact_config, redact_secrets
from textclf.resources import check_devices, check_memory
from textclf.resume import (
    LAST_CHECKPOINT,
    RESUME_DIR,
    record_run,
    resume_lock,
    run_to_resume,
    sweep_abandoned,
)
from textclf.tracking import (
    CHECKPOINT_TAG,
    TrackingStore,
    artifact_store_errors,
    check_tracking_uri,
    tracking_uri,
    write_run_reference,
)

RUN_NAME_TAG = "mlflow.runName"  # a caller's name for the run (tune: <study>-trial-<n>)


@dataclass(frozen=True)
class TrainSummary:
    """What a finished training hands on (rank 0 only; the other DDP ranks get None)."""

    run_id: str  # the MLflow run, which evaluate completes
    monitor: str  # train.monitor, e.g. val/f1_macro
    best_score: float  # its value for the delivered checkpoint
    epochs: int


@dataclass(frozen=True)
class Training:
    """A Trainer and the parts of it the stage reads back after fit."""

    trainer: pl.Trainer
    checkpoint: ModelCheckpoint  # the best model by train.monitor, in ``resume / "best"``
    best_io: BestInMemoryIO  # holds that model in memory until it is due on disk
    history: EpochHistory  # the curves
    resume: Path  # the resume directory (see resume_dir)

    @property
    def last(self) -> Path:
        return self.resume / LAST_CHECKPOINT


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


def run_name(cfg: Config, tags: Mapping[str, str]) -> str:
    """tracking.run_name when set; else ``<model>[-<what>]-<id>``: the model's module
    (fasttext, lstm, transformer), what started the run (the DVC experiment, the caller's name
    such as tune's ``<study>-trial-<n>``, or the Hydra sweep's job number) and six hex digits
    from os.urandom. (MLflow draws its own names from ``random``, which the seed has just
    reset: every run with one seed got the same name.)"""
    if cfg.tracking.run_name is not None:
        return cfg.tracking.run_name
    model = str(cfg.model["_target_"]).rsplit(".", 2)[-2]  # textclf.models.<module>.<Class>
    job = tags.get("hydra.job.num")
    what = os.environ.get("DVC_EXP_NAME") or tags.get(RUN_NAME_TAG) or (f"job{job}" if job is not None else None)
    return "-".join(part for part in (model, what, secrets.token_hex(3)) if part)


def build_datamodule(cfg: Config, processed: Path) -> TextDataModule:
    return TextDataModule(
        processed,
        batch_size=cfg.train.batch_size,
        eval_batch_size=cfg.train.eval_batch_size,
        num_workers=cfg.train.num_workers,
        max_len=tokens_kept(cfg.model),
        seed=cfg.seed,
        length_buckets=cfg.train.length_buckets,
        embeddings_cache=cfg.paths.cache / EMBEDDINGS_DIR,  # a frozen encoder's vectors, computed once
    )


def build_module(cfg: Config, datamodule: TextDataModule) -> TextClassifier:
    """The LightningModule; its weights are drawn here, from the generators the seed set."""
    resolved = to_dict(cfg)
    return TextClassifier(
        model=resolved["model"],
        optimizer=resolved["optimizer"],
        scheduler=resolved["scheduler"],
        vocab_size=datamodule.vocab_size,
        num_classes=datamodule.num_classes,
        label_smoothing=cfg.train.label_smoothing,
        class_weights=class_weights(cfg, datamodule),
        loss=cfg.train.loss,
        multi_label=datamodule.multi_label,
    )


def class_weights(cfg: Config, datamodule: TextDataModule) -> list[float] | None:
    """train.class_weights=balanced: n / (C * n_c) for each class c of the training split (as
    scikit-learn's "balanced"), so each class weighs the same in the loss however rare it is."""
    if cfg.train.class_weights is None:
        return None
    datamodule.setup("fit")
    if datamodule.multi_label:
        return positive_weights(datamodule.splits["train"].labels)
    counts = torch.bincount(datamodule.splits["train"].labels, minlength=datamodule.num_classes).clamp(min=1)
    return (counts.sum() / (datamodule.num_classes * counts.double())).tolist()


def positive_weights(labels: torch.Tensor) -> list[float]:
    """train.class_weights=balanced for a multi-label model: each label's pos_weight, its
    negatives / positives in the training split ((N, C) multi-hot ``labels``; a label with no
    positive or no negative counts one), so a rare label's positives weigh as its negatives."""
    positives = labels.sum(dim=0, dtype=torch.float64).clamp(min=1)
    negatives = (labels.shape[0] - labels.sum(dim=0, dtype=torch.float64)).clamp(min=1)
    return (negatives / positives).tolist()


def check_monitor(cfg: Config, datamodule: TextDataModule) -> None:
    """train.monitor must be a metric this model logs (val/f1_micro: multi-label models only)."""
    if cfg.train.monitor in metrics.MULTI_LABEL_MONITORS and not datamodule.multi_label:
        raise TextclfError(
            f"train.monitor={cfg.train.monitor}: logged for multi-label data only, and {datamodule.processed} "
            "holds one label per text: use val/f1_macro, val/accuracy or val/loss"
        )


def build_trainer(cfg: Config, resume: Path, callbacks: list[Callback] | None = None) -> Training:
    """The Trainer from ``cfg.trainer``, without a logger (rank 0 gets one in open_run), with
    the callbacks in the order Lightning runs them: the epoch seed, the curves, the caller's
    ``callbacks``, the best checkpoint, then the resume point (a Checkpoint: after all others)."""
    interval = cfg.train.resume_interval_s
    resume_points = [] if interval is None else [ResumePoint(resume / LAST_CHECKPOINT, interval)]
    checkpoint = ModelCheckpoint(
        dirpath=resume / "best",
        filename=CHECKPOINT_NAME,
        monitor=cfg.train.monitor,
        mode=metrics.mode(cfg.train.monitor),
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
        save_weights_only=True,  # the deliverable is the model, not the optimizer state (3x larger)
    )
    best_io = BestInMemoryIO(resume / "best")
    history = EpochHistory()
    trainer: pl.Trainer = instantiate(
        to_dict(cfg)["trainer"],
        logger=False,  # rank 0 gets its MLflow logger in open_run, once the Trainer knows the ranks
        callbacks=[EpochSeed(cfg.seed), history, *(callbacks or []), checkpoint, *resume_points],
        default_root_dir=resume,
        use_distributed_sampler=False,  # the data module shards batches itself (see datamodule.py)
        enable_model_summary=False,
        plugins=[best_io],
    )
    return Training(trainer, checkpoint, best_io, history, resume)


def open_run(
    cfg: Config, uri: str, manifest: dict[str, Any], training: Training, resuming: bool, tags: Mapping[str, str]
) -> tuple[BatchedMLFlowLogger, bool]:
    """Rank 0: the Trainer's MLflow logger, on the run the resume point names (``resuming``)
    or on a new run; -> (logger, whether fit resumes). A resume point whose run is not in the
    store is discarded (train afresh); the run of a training killed before its first resume
    point is marked KILLED. The run is recorded in the resume directory."""
    resume, trainer = training.resume, training.trainer
    resolved = to_dict(cfg)
    store = TrackingStore(uri)
    experiment_id = store.ensure_experiment(cfg.tracking.experiment_name)
    previous = run_to_resume(resume, uri, experiment_id)
    if resuming and previous is None:
        resuming = discard_stale(resume, uri, trainer)
    if previous is not None and not resuming:  # killed before its first epoch ended
        if store.get_run(previous).info.status == "RUNNING":
            store.set_terminated(previous, "KILLED")
    run_id = previous if resuming else None
    logger = BatchedMLFlowLogger(
        experiment_name=cfg.tracking.experiment_name,
        run_name=run_name(cfg, tags),  # the name of a new run (a resumed one keeps its own)
        tracking_uri=uri,
        tags={**run_tags(resolved, manifest), **{k: v for k, v in tags.items() if k != RUN_NAME_TAG}},
        flush_every=cfg.tracking.flush_every,
        flush_interval_s=cfg.tracking.flush_interval_s,
        run_id=run_id,  # a resumed training goes on in its own run
    )
    trainer.logger = logger
    if run_id is None:
        logger.log_hyperparams(redact_secrets(flatten(resolved)))
    else:
        print(f"train: resuming from {training.last} (MLflow run {run_id})", flush=True)
        store.update_run(run_id, status="RUNNING")  # KILLED by a sweep
        store.set_tag(run_id, "resumed", "true")
    record_run(resume, logger.run_id, logger.experiment_id, uri)
    return logger, resuming


def fit_with_resume(training: Training, module: TextClassifier, datamodule: TextDataModule, resuming: bool) -> None:
    """Fits, from the resume point when ``resuming``. A failure (a diverged loss, a bug, a
    pruned trial) would recur on resume, so it deletes the resume directory: only an interrupt
    or a killed process leaves the resume point for the next run."""
    trainer = training.trainer
    try:
        # Only the pipeline's own file, in its own cache, is resumed from; it holds plain
        # tensors and containers, so it loads weights-only as well.
        gc.freeze()  # what opening the MLflow run created, too (see train)
        trainer.fit(module, datamodule=datamodule, ckpt_path=training.last if resuming else None, weights_only=True)
    except Exception:
        if trainer.is_global_zero:
            shutil.rmtree(training.resume, ignore_errors=True)
        raise


def deliver_outputs(
    cfg: Config, training: Training, logger: BatchedMLFlowLogger, processed: Path, models_dir: Path, reports_dir: Path
) -> TrainSummary:
    """Rank 0, after fit: moves the best checkpoint, the config that made it (secrets masked,
    as in the run's params), the vocabulary and the run reference into ``models_dir`` as one,
    tags the run with the checkpoint's sha256, logs the config to the run and writes the curves."""
    store = TrackingStore(tracking_uri(cfg.tracking))
    training.best_io.flush()
    checkpoint = training.checkpoint
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    if best is None or not best.is_file():
        raise TextclfError(f"training produced no checkpoint in {training.resume} (no validation epoch ran?)")
    with staged_dir(models_dir) as staging:
        model_file = staging / f"{CHECKPOINT_NAME}.ckpt"
        link_or_copy(best, model_file)  # no copy: the resume directory holding `best` is deleted after
        config_file = staging / "config.yaml"
        config_file.write_text(yaml.safe_dump(redact_config(to_dict(cfg)), sort_keys=False), encoding="utf-8")
        if (processed / VOCAB_FILE).is_file():  # the regex encoder's (a pretrained tokenizer has none)
            shutil.copyfile(processed / VOCAB_FILE, staging / VOCAB_FILE)
        # Which checkpoint this run trained: evaluate scores (and ships) only that one into the run.
        checkpoint_sha256 = file_sha256(model_file)
        store.set_tag(logger.run_id, CHECKPOINT_TAG, checkpoint_sha256)
        write_run_reference(staging, logger.run_id, logger.experiment_id, checkpoint_sha256, store.uri)
        # A full artifact store is named as such, not as a failure to write models_dir. The run
        # shows the config at its root; evaluate logs the model (runs:/<id>/model) beside it.
        with artifact_store_errors(store.get_run(logger.run_id).info.artifact_uri):
            store.log_artifact(logger.run_id, str(config_file))
        write_text(reports_dir / CURVES_FILE, training.history.to_csv())
    return TrainSummary(
        run_id=logger.run_id,
        monitor=cfg.train.monitor,
        best_score=float(checkpoint.best_model_score),
        epochs=training.trainer.current_epoch,
    )


def train(
    cfg: Config,
    processed: Path,
    models_dir: Path,
    reports_dir: Path,
    tags: Mapping[str, str] | None = None,
    callbacks: list[Callback] | None = None,
) -> TrainSummary | None:
    """Trains, then moves the finished outputs into place; returns the summary on rank 0 and
    None on the other DDP ranks (rank 0 delivers).

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
    datamodule = build_datamodule(cfg, processed)
    check_monitor(cfg, datamodule)
    module = build_module(cfg, datamodule)
    resume = resume_dir(cfg, manifest, uri)
    restore_launch_state = launch_state_restorer()  # DDP leaves env vars and a process group behind
    training = build_trainer(cfg, resume, callbacks)
    trainer = training.trainer
    # Every object alive now (imported modules, config, data) outlives the training. Frozen, the
    # garbage collector no longer walks them in its full collections: over the 700k objects of
    # torch, Lightning and MLflow each takes about 0.3 s, several per training. Unfrozen at the end.
    gc.freeze()
    try:
        with ExitStack() as locks:
            # The global rank is certain only now (own DDP launcher, torchrun, SLURM): only rank 0
            # writes files and talks to MLflow; the other ranks never open the tracking store.
            if trainer.is_global_zero:
                sweep_abandoned(cfg, exclude=resume)  # other trainings that died: runs KILLED
                locks.enter_context(resume_lock(resume))
            # Every rank decides alike: rank 0 changes nothing in ``resume`` before fit starts
            # (but to discard a stale resume point, which external launchers are told to rerun).
            resuming = training.last.is_file()
            logger = None
            if trainer.is_global_zero:
                logger, resuming = open_run(cfg, uri, manifest, training, resuming, tags or {})
            fit_with_resume(training, module, datamodule, resuming)
            if logger is None:
                return None
            summary = deliver_outputs(cfg, training, logger, processed, models_dir, reports_dir)
            shutil.rmtree(resume, ignore_errors=True)  # finished: the next run starts afresh
            return summary
    except NonFiniteLoss as error:
        # Still a NonFiniteLoss (tune counts the trial as diverged), now saying what was kept.
        last_good = (models_dir / f"{CHECKPOINT_NAME}.ckpt").is_file()
        raise NonFiniteLoss(
            f"{error}; training stopped, "
            + (f"{models_dir} keeps the last good model" if last_good else f"no model written to {models_dir}")
        ) from error
    finally:
        restore_launch_state()
        gc.unfreeze()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)

    def stage() -> None:
        cfg = load_params(args.params, targets=MODEL_SECTIONS)  # builds no data source: see config.validate
        summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
        if summary is not None:
            print(f"train: {json.dumps(asdict(summary))}")

    run_cli("train", stage)


if __name__ == "__main__":
    main()
