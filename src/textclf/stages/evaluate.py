"""Stage 4: score the best checkpoint on the test split; the only stage that reads test labels.

Calibrates first (textclf.calibration, ``calibration.method``): a temperature T fitted on the
validation split's logits; the test split then measures the probabilities before and after.

Writes ``<paths.reports>/``: metrics.json (DVC metrics: the test scores, the expected
calibration error before and after T, and T), per_class.json, confusion.csv (DVC confusion
plot), per_class_f1.csv (DVC bar plot), confusion.png, reliability_uncalibrated.csv and
reliability_calibrated.csv (DVC plot: each bin's confidence against its accuracy) and
reliability.png (the reliability diagram), top_features.json (bag and linear models: each class's
strongest features, textclf.explain.top_features; {} for the others) and report.html
(textclf.report: all of the above on one page that opens offline, with the learning curves
and the ``ERRORS_SHOWN`` test documents misclassified with the highest calibrated
probability, their tokens highlighted by contribution); completes the MLflow run that trained the
checkpoint with the test metrics (and ``val/temperature``) and reports, PNGs of the per-class
F1 and of the learning curves (from training_curves.csv), and the shipped model
(``runs:/<id>/model``, see textclf.serving): the checkpoint, the encoder and labels of
``<paths.processed>/``, the config that trained it (``<paths.models>/config.yaml``) and T, so
it returns the calibrated probabilities.

A multi-label model (textclf.data.labels) writes the same files: the test scores at the
decision thresholds tuned on the validation split (``train.threshold``, textclf.thresholds),
which ship with the model; per label precision, recall, F1, support and threshold; a
confusion of labels in which ``(none)`` stands for a label missed (column) or given wrongly
(row); the calibration of every (text, label) pair (``evaluate_multi_label``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path

import torch
import yaml
from torch.nn import functional as F

from textclf.atomic import write_files
from textclf.calibration import (
    calibrated,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    reliability_csv,
)
from textclf.config import MODEL_SECTIONS, Config, load_params
from textclf.data.datamodule import BatchedSplit, TextDataModule, tokens_kept
from textclf.encoders.base import TextEncoder, load_encoder
from textclf.errors import TextclfError, run_cli
from textclf.explain import explain_batch, top_features
from textclf.hashing import file_sha256
from textclf.metrics import (
    CARDINALITY,
    CARDINALITY_PREDICTED,
    ECE_CALIBRATED,
    ECE_UNCALIBRATED,
    F1_MACRO,
    LOSS,
    LOSS_CALIBRATED,
    MULTI_LABEL_TEST_SCORES,
    TEMPERATURE,
    TEST_SCORES,
    THRESHOLD,
    evaluation_metrics,
    logged_name,
    multi_label_evaluation_metrics,
)
from textclf.models.checkpoint import load_checkpoint
from textclf.models.classifier import TextClassifier
from textclf.outputs import CHECKPOINT_NAME, CURVES_FILE, RUN_FILE
from textclf.report import ErrorRecord, render_report
from textclf.resume import sweep_abandoned
from textclf.serving import log_model
from textclf.tracking import (
    CHECKPOINT_TAG,
    TrackingStore,
    artifact_store_errors,
    check_run_store,
    check_tracking_uri,
    read_run_reference,
    store_errors,
    tracking_uri,
)

METRICS_FILE, PER_CLASS_FILE = "metrics.json", "per_class.json"
CONFUSION_CSV, CONFUSION_PNG = "confusion.csv", "confusion.png"
PER_CLASS_F1_CSV = "per_class_f1.csv"  # class,f1: the DVC bar plot
# The reliability diagram's bins (textclf.calibration.RELIABILITY_COLUMNS), as DVC plots them,
# and drawn (also logged to MLflow).
RELIABILITY_CSVS = {"uncalibrated": "reliability_uncalibrated.csv", "calibrated": "reliability_calibrated.csv"}
RELIABILITY_PNG = "reliability.png"
# Logged to MLflow only (evaluation/), drawn from the reports.
PER_CLASS_F1_PNG, CURVES_PNG = "per_class_f1.png", "training_curves.png"
REPORT_HTML = "report.html"  # the run report (textclf.report), also logged to MLflow
ERRORS_SHOWN = 20  # the report's most confident test errors
TOP_FEATURES_FILE, TOP_FEATURES_PER_CLASS = "top_features.json", 20  # {class: [[feature, weight], ...]}


@torch.inference_mode()
def predict(
    module: TextClassifier, datamodule: TextDataModule, split: str = "test"
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> logits (N, C) float32, labels (N,) for the whole ``split`` ("test" or "val"), in order."""
    module.eval()
    datamodule.setup("test" if split == "test" else "validate")
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    logits, labels = [], []
    for batch in loader:
        logits.append(module(batch).float())
        labels.append(batch["labels"])
    return torch.cat(logits), torch.cat(labels)


def calibration_temperature(cfg: Config, module: TextClassifier, datamodule: TextDataModule) -> float:
    """-> the temperature ``cfg.calibration.method`` ships: fitted on the validation split's
    logits (rounded to 6 decimals, as metrics.json records it and the shipped model uses it),
    or 1.0 for none. The test split is never read here."""
    if cfg.calibration.method == "none":
        return 1.0
    return round(fit_temperature(*predict(module, datamodule, split="val")), 6)


def evaluate(
    cfg: Config, processed: Path, models_dir: Path, reports_dir: Path, run_id: str | None = None
) -> dict[str, float]:
    """Calibrates on the validation split, then scores the test split once; returns the
    metrics written to metrics.json.

    The checkpoint must be the one its MLflow run trained (its sha256, recorded by train in
    mlflow_run.json and as a tag of the run) and, given ``run_id`` (a pipeline job evaluating
    what it just trained), that run must be ``run_id``: else nothing is scored or logged."""
    checkpoint = models_dir / f"{CHECKPOINT_NAME}.ckpt"
    if not checkpoint.is_file():
        raise TextclfError(f"{checkpoint}: checkpoint not found (run `dvc repro train`)")
    # The run's store is checked before any work: an unreachable server would be retried for
    # minutes, a vanished SQLite store silently recreated empty, after the reports were written.
    uri = tracking_uri(cfg.tracking)
    check_tracking_uri(uri)
    reference = read_run_reference(models_dir)
    check_run_store(uri, reference)
    if run_id is not None and reference["run_id"] != run_id:
        raise TextclfError(
            f"{models_dir}: holds the model of MLflow run {reference['run_id']}, not of run {run_id} that "
            "this job trained (another run wrote into this directory); nothing evaluated"
        )
    module = load_checkpoint(checkpoint)
    # Hashed after loading, against the reference read before: a checkpoint swapped in at any
    # moment between the two cannot pass for the one the reference names.
    checkpoint_sha256 = file_sha256(checkpoint)
    if reference.get("checkpoint_sha256") != checkpoint_sha256:
        raise TextclfError(
            f"{checkpoint}: not the checkpoint MLflow run {reference['run_id']} trained (sha256 "
            f"{checkpoint_sha256[:12]}..., its {models_dir / RUN_FILE} says "
            f"{str(reference.get('checkpoint_sha256'))[:12]}...); nothing evaluated (retrain: `dvc repro train`)"
        )
    datamodule = TextDataModule(
        processed,
        batch_size=cfg.train.eval_batch_size,
        eval_batch_size=cfg.train.eval_batch_size,
        max_len=tokens_kept(module.hparams.model),
    )
    details = {  # the run report's header
        "MLflow run": reference["run_id"],
        "corpus": cfg.data.corpus,
        "model": module.hparams.model.get("_target_", "?"),
        "checkpoint sha256": checkpoint_sha256,
    }
    if datamodule.multi_label:
        metrics, thresholds = evaluate_multi_label(cfg, module, datamodule, reports_dir, details)
        with store_errors(uri):
            log_to_run(cfg, models_dir, processed, metrics, reports_dir, reference, thresholds)
        return metrics
    names = datamodule.labels
    temperature = calibration_temperature(cfg, module, datamodule)  # before the test split is read
    logits, labels = predict(module, datamodule)
    scores = evaluation_metrics(len(names))(logits, labels)
    metrics = {key: round(float(scores[key]), 6) for key in TEST_SCORES}
    metrics[LOSS] = round(float(F.cross_entropy(logits, labels)), 6)
    metrics["num_test"] = int(labels.numel())
    support = torch.bincount(labels, minlength=len(names))
    # torchmetrics leaves out of a macro average every class that is neither in the test split
    # nor predicted (no true or false positive, no false negative): say which classes count.
    counted = (support + torch.bincount(logits.argmax(dim=1), minlength=len(names))) > 0
    metrics["macro_classes"] = int(counted.sum())
    # Calibration, measured on the test split: the predicted classes (so every score above)
    # are the same at any temperature; only the probabilities change.
    probabilities = {"uncalibrated": logits.softmax(dim=1), "calibrated": calibrated(logits, temperature)}
    metrics[ECE_UNCALIBRATED] = round(expected_calibration_error(probabilities["uncalibrated"], labels), 6)
    metrics[ECE_CALIBRATED] = round(expected_calibration_error(probabilities["calibrated"], labels), 6)
    metrics[LOSS_CALIBRATED] = round(float(F.cross_entropy(logits / temperature, labels)), 6)
    metrics[TEMPERATURE] = temperature
    bins = {name: reliability_bins(p, labels) for name, p in probabilities.items()}
    per_class = {
        name: {
            "precision": round(float(scores["precision"][i]), 6),
            "recall": round(float(scores["recall"][i]), 6),
            "f1": round(float(scores["f1"][i]), 6),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    predicted = logits.argmax(dim=1)
    pairs = [(names[a], names[p]) for a, p in zip(labels.tolist(), predicted.tolist())]
    png = confusion_png(scores["confusion"].cpu(), names)
    reliability = reliability_png(bins, metrics)
    encoder = load_encoder(processed)  # once: the top features and the errors' tokens both read it
    strongest = strongest_features(module, encoder, names)
    summary = dict(metrics)  # metrics.json also names the classes left out of the macro averages
    if not bool(counted.all()):
        summary["macro_excludes"] = [name for name, kept in zip(names, counted.tolist()) if not kept]
    report = render_report(
        summary,
        per_class,
        {"confusion": png, "curves": curves_png(reports_dir), "reliability": reliability},
        confident_test_errors(module, datamodule, encoder, probabilities["calibrated"], labels),
        top_features=strongest or None,
        details=details,
    )

    write_reports(reports_dir, summary, per_class, pairs, png, bins, reliability, report, strongest)
    with store_errors(uri):
        log_to_run(cfg, models_dir, processed, metrics, reports_dir, reference)
    return metrics


def write_reports(
    reports_dir: Path,
    summary: dict[str, object],
    per_class: dict[str, dict[str, float]],
    pairs: list[tuple[str, str]],
    confusion: bytes,
    bins: dict[str, list[dict[str, float]]],
    reliability: bytes,
    report: str,
    strongest: dict[str, list[list]],
) -> None:
    """Writes every report dvc.yaml declares as evaluate's outs, single- or multi-label:
    ``pairs`` the confusion's (actual, predicted) rows, ``confusion`` and ``reliability`` the
    PNGs, ``bins`` reliability_bins' rows by calibration state, ``report`` the run report.
    Everything is computed before the first write; the files are written as one (all staged,
    then renamed), so a failure leaves none of them changed."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows(pairs)
    write_files(
        {
            reports_dir / PER_CLASS_FILE: _json_bytes(per_class),
            reports_dir / CONFUSION_CSV: table.getvalue().encode(),
            reports_dir / PER_CLASS_F1_CSV: per_class_f1_csv(per_class).encode(),
            reports_dir / CONFUSION_PNG: confusion,
            **{reports_dir / RELIABILITY_CSVS[name]: reliability_csv(rows).encode() for name, rows in bins.items()},
            reports_dir / RELIABILITY_PNG: reliability,
            reports_dir / REPORT_HTML: report.encode(),
            reports_dir / TOP_FEATURES_FILE: _json_bytes(strongest),
            reports_dir / METRICS_FILE: _json_bytes(summary),
        }
    )


def confusion_png(confusion: torch.Tensor, names: list[str]) -> bytes:
    """The confusion heatmap (textclf.plots.confusion) as PNG bytes."""
    from textclf import plots

    return plots.png_bytes(plots.confusion(confusion, names))


NO_LABEL = "(none)"  # a multi-label confusion's row or column for "no label": a label given wrongly, or missed


def multi_label_confusion(labels: torch.Tensor, predicted: torch.Tensor, names: list[str]) -> list[tuple[str, str]]:
    """(N, C) true and predicted 0/1 labels -> (actual, predicted) rows, one per text and label
    it has or is given: (label, label) for a label found, (label, NO_LABEL) for one missed,
    (NO_LABEL, label) for one given wrongly. Its confusion matrix (names + NO_LABEL) has the
    true positives on the diagonal, the false negatives in the last column, the false
    positives in the last row."""
    rows = []
    for truth, given in zip(labels.bool().tolist(), predicted.bool().tolist()):
        for name, has, got in zip(names, truth, given):
            if has or got:
                rows.append((name if has else NO_LABEL, name if got else NO_LABEL))
    return rows


def evaluate_multi_label(
    cfg: Config, module: TextClassifier, datamodule: TextDataModule, reports_dir: Path, details: dict[str, str]
) -> tuple[dict[str, float], list[float]]:
    """A multi-label model's evaluate: temperature, then thresholds, on the validation split;
    the test split scored at them. Writes the reports (as evaluate's; the run report without
    its section of confident errors, which explains single-label decisions); -> (metrics, thresholds)."""
    from textclf.thresholds import decide, tune_thresholds

    names = datamodule.labels
    val_logits, val_labels = predict(module, datamodule, split="val")  # the test split is not read yet
    temperature = 1.0
    if cfg.calibration.method != "none":
        temperature = round(fit_temperature(val_logits, val_labels), 6)
    thresholds = tune_thresholds(calibrated(val_logits, temperature, multi_label=True), val_labels, cfg.train.threshold)
    logits, labels = predict(module, datamodule)
    probabilities = {"uncalibrated": logits.sigmoid(), "calibrated": calibrated(logits, temperature, multi_label=True)}
    predicted = decide(probabilities["calibrated"], thresholds)  # (N, C) bool, as the shipped model decides
    scores = multi_label_evaluation_metrics(len(names))(predicted.long(), labels.long())
    metrics = {key: round(float(scores[key]), 6) for key in MULTI_LABEL_TEST_SCORES}
    metrics[LOSS] = round(float(F.binary_cross_entropy_with_logits(logits, labels.float())), 6)
    metrics["num_test"] = int(labels.shape[0])
    metrics[CARDINALITY] = round(float(labels.sum(dim=1, dtype=torch.float64).mean()), 6)
    metrics[CARDINALITY_PREDICTED] = round(float(predicted.sum(dim=1, dtype=torch.float64).mean()), 6)
    support = labels.sum(dim=0, dtype=torch.int64)
    counted = (support + predicted.sum(dim=0)) > 0  # as torchmetrics' macro averages count labels
    metrics["macro_classes"] = int(counted.sum())
    metrics[ECE_UNCALIBRATED] = round(expected_calibration_error(probabilities["uncalibrated"], labels), 6)
    metrics[ECE_CALIBRATED] = round(expected_calibration_error(probabilities["calibrated"], labels), 6)
    metrics[LOSS_CALIBRATED] = round(float(F.binary_cross_entropy_with_logits(logits / temperature, labels.float())), 6)
    metrics[TEMPERATURE] = temperature
    if cfg.train.threshold == "global":
        metrics[THRESHOLD] = thresholds[0]
    bins = {name: reliability_bins(p, labels) for name, p in probabilities.items()}
    per_class = {
        name: {
            "precision": round(float(scores["precision"][i]), 6),
            "recall": round(float(scores["recall"][i]), 6),
            "f1": round(float(scores["f1"][i]), 6),
            "support": int(support[i]),
            "threshold": thresholds[i],
        }
        for i, name in enumerate(names)
    }
    pairs = multi_label_confusion(labels, predicted, names)
    shown = [*names, NO_LABEL]
    index = {name: i for i, name in enumerate(shown)}
    confusion = torch.zeros(len(shown), len(shown), dtype=torch.int64)
    for actual, given in pairs:
        confusion[index[actual], index[given]] += 1
    summary = {**metrics, "multi_label": True, "threshold_tuning": cfg.train.threshold}
    if not bool(counted.all()):
        summary["macro_excludes"] = [name for name, kept in zip(names, counted.tolist()) if not kept]
    png, reliability = confusion_png(confusion, shown), reliability_png(bins, metrics)
    figures = {"confusion": png, "curves": curves_png(reports_dir), "reliability": reliability}
    strongest = strongest_features(module, load_encoder(datamodule.processed), names)
    report = render_report(summary, per_class, figures, [], top_features=strongest or None, details=details)
    write_reports(reports_dir, summary, per_class, pairs, png, bins, reliability, report, strongest)
    return metrics, thresholds


def reliability_png(bins: dict[str, list[dict[str, float]]], metrics: dict[str, float]) -> bytes:
    """The reliability diagram (textclf.plots.reliability) of reliability_bins' rows before
    and after calibration, as PNG bytes."""
    from textclf import plots

    figure = plots.reliability(
        bins["uncalibrated"],
        bins["calibrated"],
        metrics[ECE_UNCALIBRATED],
        metrics[ECE_CALIBRATED],
        metrics[TEMPERATURE],
    )
    return plots.png_bytes(figure)


def curves_png(reports_dir: Path) -> bytes | None:
    """The learning curves (textclf.plots.learning_curves) of the training_curves.csv train
    wrote beside the reports, as PNG bytes; None without one."""
    from textclf import plots

    curves = reports_dir / CURVES_FILE
    if not curves.is_file():
        return None
    return plots.png_bytes(plots.learning_curves(curves.read_text(encoding="utf-8")))


def most_confident_errors(probabilities: torch.Tensor, labels: torch.Tensor, count: int = ERRORS_SHOWN) -> list[int]:
    """The indices of the (at most) ``count`` documents whose predicted class (the top of
    ``probabilities`` (N, C)) is not their label (N,), the highest top probability first (ties:
    the earlier document first)."""
    confidence, predicted = probabilities.max(dim=1)
    wrong = torch.nonzero(predicted != labels).flatten()
    order = torch.argsort(confidence[wrong], descending=True, stable=True)
    return wrong[order][:count].tolist()


def strongest_features(module: TextClassifier, encoder: TextEncoder, names: list[str]) -> dict[str, list[list]]:
    """top_features.json: {class name: [[feature, weight], ...]} for bag and linear models
    (textclf.explain.top_features), {} for the others."""
    features = top_features(module, encoder, TOP_FEATURES_PER_CLASS)  # None: not a bag or linear model
    if features is None:
        return {}
    return {names[int(c)]: [[f, round(w, 6)] for f, w in ranked] for c, ranked in features.items()}


def confident_test_errors(
    module: TextClassifier,
    datamodule: TextDataModule,
    encoder: TextEncoder,
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    count: int = ERRORS_SHOWN,
) -> list[ErrorRecord]:
    """The report's ``count`` most confident errors of the test split (loaded by ``predict``),
    given its calibrated ``probabilities`` (N, C) and ``labels`` (N,); each document as the
    model read it (clipped to its max_len)."""
    shown = most_confident_errors(probabilities, labels, count)
    confidence, predicted = probabilities[shown].max(dim=1)
    batch = BatchedSplit(datamodule.splits["test"], datamodule.max_len)[shown]
    return error_records(
        module, encoder, batch, datamodule.labels, predicted.tolist(), confidence.tolist(), documents=shown
    )


def error_records(
    module: TextClassifier,
    encoder: TextEncoder,
    batch: dict[str, torch.Tensor],
    names: list[str],
    predicted: list[int],
    confidence: list[float],
    documents: list[int],
) -> list[ErrorRecord]:
    """The report's records of the misclassified documents in ``batch`` (the flat mapping:
    tokens, offsets, lengths, labels; each document as the model reads it), whose predicted
    class indices, calibrated probabilities and positions in the test split are given.

    Each document's tokens with their contributions to its predicted class's logit
    (textclf.explain: exact for bag and linear models, integrated gradients for the others)."""
    if not documents:
        return []
    explained = explain_batch(module, encoder, batch)
    records = []
    for i, (document, label) in enumerate(zip(documents, batch["labels"].tolist())):
        tokens, contributions, method = explained[i].tokens, explained[i].contributions, explained[i].method
        records.append(
            ErrorRecord(
                document=document,
                actual=names[label],
                predicted=names[predicted[i]],
                confidence=confidence[i],
                tokens=tokens,
                contributions=contributions,
                method=method,
            )
        )
    return records


def _json_bytes(data: object) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode()


def per_class_f1_csv(per_class: dict[str, dict[str, float]]) -> str:
    """per_class.json -> ``class,f1`` rows, in label order (the DVC bar plot's data)."""
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["class", "f1"])
    writer.writerows((name, row["f1"]) for name, row in per_class.items())
    return rows.getvalue()


def log_figures(store: TrackingStore, run_id: str, reports_dir: Path, f1_macro: float) -> None:
    """Logs PNGs of the per-class F1 and, when train wrote training_curves.csv beside the
    reports, of the learning curves, to ``evaluation/`` of run ``run_id``."""
    from textclf import plots

    per_class = json.loads((reports_dir / PER_CLASS_FILE).read_text(encoding="utf-8"))
    store.log_figure(run_id, plots.per_class_f1(per_class, f1_macro), f"evaluation/{PER_CLASS_F1_PNG}")
    curves = reports_dir / CURVES_FILE
    if curves.is_file():
        figure = plots.learning_curves(curves.read_text(encoding="utf-8"))
        store.log_figure(run_id, figure, f"evaluation/{CURVES_PNG}")


def log_to_run(
    cfg: Config,
    models_dir: Path,
    processed: Path,
    metrics: dict[str, float],
    reports_dir: Path,
    reference: dict[str, str] | None = None,
    thresholds: list[float] | None = None,
) -> None:
    """Adds test metrics and reports, then the shipped model (the checkpoint with the
    encoder and labels of ``processed``), to the run that trained the checkpoint
    (``reference``: models_dir's mlflow_run.json as read when the checkpoint was loaded);
    ``thresholds``, a multi-label model's (one per label), ship with it."""
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    if reference is None:
        reference = read_run_reference(models_dir)
    store = TrackingStore(tracking_uri(cfg.tracking))
    run_id = reference["run_id"]
    try:
        trained = store.get_run(run_id).data.tags.get(CHECKPOINT_TAG)
        if trained != reference.get("checkpoint_sha256"):
            raise TextclfError(
                f"{models_dir}: its checkpoint (sha256 {str(reference.get('checkpoint_sha256'))[:12]}...) is not "
                f"the one MLflow run {run_id} trained ({str(trained)[:12]}...); nothing logged to that run"
            )
    except MlflowException:
        # The checkpoint came from another store (e.g. restored from a DVC cache elsewhere):
        # record the evaluation in a run of its own rather than failing.
        experiment_id = store.ensure_experiment(cfg.tracking.experiment_name)
        run_id = store.create_run(experiment_id, tags={"trained_in_run": run_id}).info.run_id
    timestamp = int(1000 * time.time())
    logged = store.get_run(run_id).info.artifact_uri
    # Every write is retried while SQLite says "database is locked" (parallel jobs, one store).
    store.log_batch(
        run_id,
        metrics=[Metric(logged_name(key), float(value), timestamp, 0) for key, value in metrics.items()],
    )
    with artifact_store_errors(logged):
        for name in (METRICS_FILE, PER_CLASS_FILE, CONFUSION_PNG, RELIABILITY_PNG, REPORT_HTML, TOP_FEATURES_FILE):
            store.log_artifact(run_id, str(reports_dir / name), artifact_path="evaluation")
        log_figures(store, run_id, reports_dir, metrics[F1_MACRO])
        # The config that trained the checkpoint (secrets masked, as train wrote it), not this
        # stage's params; the encoder ships from ``processed``, as preprocess saved it, and the
        # temperature evaluate fitted, so the model serves the calibrated probabilities.
        config = yaml.safe_load((models_dir / "config.yaml").read_text(encoding="utf-8"))
        checkpoint = models_dir / f"{CHECKPOINT_NAME}.ckpt"
        log_model(
            store.uri, run_id, checkpoint, processed, config, metrics[TEMPERATURE], thresholds
        )  # runs:/<id>/model
    if store.get_run(run_id).info.status == "RUNNING":
        store.set_terminated(run_id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)

    def stage() -> None:
        cfg = load_params(args.params, targets=MODEL_SECTIONS)  # builds no data source: see config.validate
        sweep_abandoned(cfg)  # runs of trainings that died: KILLED (see textclf.resume)
        metrics = evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
        print(f"evaluate: {json.dumps(metrics)}")

    run_cli("evaluate", stage)


if __name__ == "__main__":
    main()
