"""Ensembles: the shipped models of several logged runs combined into one logged model.

  python -m textclf.ensemble --run-id A --run-id B [--run-id C ...]
  python -m textclf.ensemble --model-uri models:/textclf@champion --run-id B --summary reports/ensemble.json

Members are any textclf models (``runs:/<id>/model``, ``models:/<name>@<alias>``, ...) trained
on the same data and split: the same data.* settings (mirrors aside), the same content hash
(the run tag data_content_sha256), the same held-out documents (data_held_out_sha256, where
recorded) and the same classes; they may differ in everything else
(model family, encoder, training seed). Then:

1. every member's model is copied from the store (MLflow at --tracking-uri, else
   $MLFLOW_TRACKING_URI, else ./mlflow.db) and loaded;
2. the validation and test documents are read from the raw data (the members' paths.raw, else
   --raw: what the download stage wrote for their data settings) and split exactly as
   preprocess split them (textclf.data.splits.read_held_out), as raw texts, which each member
   encodes its own way; each member's pyfunc gives every class's probability;
3. weights w on the simplex (w = softmax(theta), L-BFGS from uniform weights, float64) minimise
   the validation NLL of each combination: ``mean``, the weighted mean of the probabilities
   (sum_m w_m p_m), and ``log``, of the log-probabilities (softmax(sum_m w_m log p_m)); the
   uniform weights and each member alone are candidates too, so the ensemble is never worse
   on validation than its best member. The combination with the lower validation NLL is kept
   (--combine chooses one);
4. the test split is scored once: accuracy, macro-F1 and NLL of the ensemble and of each member;
5. a new MLflow run (in the first member's experiment) gets those metrics, the weights and the
   summary (also written to --summary), and as ``model`` a pyfunc that packs the members' models
   and the weights: raw text in, ``label`` and one probability per class out, as a single run's
   model, so predict, ``mlflow models serve`` and the registry take it unchanged.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from textclf.errors import TextclfError, first_line, run_cli
from textclf.provenance import HELD_OUT_TAG, git_commit, project_root
from textclf.serving import LABEL_COLUMN, TEXT_COLUMN, texts_of

MEAN, LOG = "mean", "log"  # the combinations: of the probabilities, of the log-probabilities
COMBINATIONS = (MEAN, LOG)
# Member probabilities are float32 softmax outputs (widened to float64), which underflow to 0
# below float32's smallest normal number: the floor of a probability before its log.
FLOOR = float(torch.finfo(torch.float32).tiny)
LBFGS_ITERATIONS = 200
# The shipped model's code file (models-from-code, as serving.MODEL_CODE) and its files.
MODEL_CODE = Path(__file__).with_name("pyfunc_ensemble.py")
ENSEMBLE_FILE, LABELS_FILE = "ensemble.json", "labels.json"
MEMBER_ARTIFACT = "member{}"  # artifact name of member i: its whole model directory
CONFIG_ARTIFACT, MEMBER_LABELS_ARTIFACT = "artifacts/config.yaml", "artifacts/labels.json"  # in a member's model
MEMBER_THRESHOLDS_ARTIFACT = "artifacts/thresholds.json"  # a multi-label model's (textclf.serving)
# data.* keys that change where the bytes come from, never what they are (data.sha256 pins them).
WHERE_NOT_WHAT = ("mirrors",)
SUMMARY_DEFAULT = Path("reports/ensemble.json")
ENSEMBLE_SUMMARY = "ensemble.json"  # an ensemble preset's summary, in its sweep directory


# --- combining ------------------------------------------------------------------------------


def combine(probabilities: torch.Tensor, weights: torch.Tensor, how: str) -> torch.Tensor:
    """(M, N, C) member probabilities and (M,) weights summing to 1 -> (N, C) probabilities."""
    if how == MEAN:
        mixed = torch.einsum("m,mnc->nc", weights, probabilities)
        return mixed / mixed.sum(dim=1, keepdim=True)  # members' rows sum to 1 within float32 rounding
    return torch.einsum("m,mnc->nc", weights, probabilities.clamp_min(FLOOR).log()).softmax(dim=1)


def nll(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, C) probabilities, (N,) class indices -> the mean negative log-likelihood."""
    return -probabilities.gather(1, labels[:, None]).clamp_min(FLOOR).log().mean()


def fit_weights(probabilities: torch.Tensor, labels: torch.Tensor, how: str) -> tuple[torch.Tensor, float]:
    """(M, N, C) float64 validation probabilities of the members, (N,) labels -> ((M,) weights
    on the simplex minimising the NLL of ``combine(..., how)``, that NLL). Deterministic: the
    same inputs give the same weights."""
    members = probabilities.shape[0]
    theta = torch.zeros(members, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [theta], lr=1.0, max_iter=LBFGS_ITERATIONS, tolerance_grad=1e-10, tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nll(combine(probabilities, theta.softmax(dim=0), how), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    # Also uniform weights and each member alone (a vertex softmax never reaches): the best of
    # these is kept, so the fit is never worse than the best member, whatever L-BFGS did.
    candidates = [theta.detach().softmax(dim=0), torch.full((members,), 1.0 / members, dtype=torch.float64)]
    candidates += list(torch.eye(members, dtype=torch.float64))
    losses = [float(nll(combine(probabilities, weights, how), labels)) for weights in candidates]
    finite = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
    best = min(finite, key=lambda i: losses[i])  # the first of equal ones
    return candidates[best], losses[best]


def fit(probabilities: torch.Tensor, labels: torch.Tensor, how: str | None = None) -> dict[str, Any]:
    """Validation probabilities and labels -> {"combine", "weights", "val_loss": {how: NLL}}: the
    combination with the lower validation NLL (``how``, if given, is the only one tried)."""
    fitted = {name: fit_weights(probabilities, labels, name) for name in ([how] if how else COMBINATIONS)}
    chosen = min(fitted, key=lambda name: fitted[name][1])  # MEAN on a tie
    return {
        "combine": chosen,
        "weights": fitted[chosen][0],
        "val_loss": {name: round(loss, 6) for name, (_, loss) in fitted.items()},
    }


def scores(probabilities: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """(N, C) probabilities, (N,) labels -> accuracy, macro-F1 (as evaluate scores them), NLL
    and the expected calibration error (``ece``, evaluate's 15 bins)."""
    from textclf.calibration import expected_calibration_error
    from textclf.metrics import ECE, LOSS
    from textclf.metrics import scores as metric_objects

    found = {name: metric(probabilities, labels) for name, metric in metric_objects(probabilities.shape[1]).items()}
    found[LOSS] = nll(probabilities, labels)
    found[ECE] = expected_calibration_error(probabilities.float(), labels)
    return {name: round(float(value), 6) for name, value in found.items()}


# --- the shipped model ----------------------------------------------------------------------


def load_member(directory: Path) -> mlflow.pyfunc.PyFuncModel:
    """A member's model directory -> its pyfunc. MLflow puts the model's code/ first on sys.path;
    it is taken off again (this process runs the textclf it has already imported)."""
    path = list(sys.path)
    try:
        return mlflow.pyfunc.load_model(str(directory), suppress_warnings=True)
    finally:
        sys.path[:] = [entry for entry in sys.path if entry in path or not entry.startswith(str(directory))]


def member_probabilities(member: mlflow.pyfunc.PyFuncModel, texts: list[str], labels: list[str]) -> torch.Tensor:
    """-> (N, C) float64: the member's probability of each class, in the order of ``labels``."""
    frame = member.predict(pd.DataFrame({TEXT_COLUMN: texts}))
    missing = [name for name in labels if name not in frame.columns]
    if missing:
        raise TextclfError(f"a member's model returns no probability of {missing[:3]} (not a textclf model?)")
    return torch.from_numpy(frame[labels].to_numpy(dtype=np.float64, copy=True))


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """Raw text -> every member's pyfunc -> their probabilities combined with the fitted weights.

    Made by pyfunc_ensemble.py; ``load_context`` loads every member (each reads its artifacts
    into memory) and checks the weights."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        artifacts = {name: Path(path) for name, path in context.artifacts.items()}
        spec = json.loads(artifacts["ensemble"].read_text(encoding="utf-8"))
        self.labels: list[str] = json.loads(artifacts["labels"].read_text(encoding="utf-8"))
        self.how = spec.get("combine")
        self.weights = torch.tensor(spec.get("weights", []), dtype=torch.float64)
        members = [MEMBER_ARTIFACT.format(i) for i in range(len(self.weights))]
        if (
            self.how not in COMBINATIONS
            or self.weights.numel() < 1
            or not bool((self.weights >= 0).all())
            or abs(float(self.weights.sum()) - 1) > 1e-9
            or any(name not in artifacts for name in members)
        ):
            raise TextclfError(
                f"{artifacts['ensemble']}: refusing to load, expected a combination ({', '.join(COMBINATIONS)}) "
                "and one weight of at least 0 per member, summing to 1"
            )
        self.members = [load_member(artifacts[name]) for name in members]

    def probabilities(self, texts: list[str]) -> torch.Tensor:
        """-> (N, C) float64, rows summing to 1."""
        stacked = torch.stack([member_probabilities(member, texts, self.labels) for member in self.members])
        return combine(stacked, self.weights, self.how)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """As a single run's model (serving.TextclfModel.predict): ``label``, then one
        probability column per class (float64, rows sum to 1)."""
        probabilities = self.probabilities(texts_of(model_input))
        frame = pd.DataFrame(probabilities.numpy(), columns=self.labels)
        frame.insert(0, LABEL_COLUMN, [self.labels[i] for i in probabilities.argmax(dim=1).tolist()])
        return frame


# --- members --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    model_uri: str
    run_id: str | None  # the run that logged the model
    directory: Path  # the model, copied here from the store
    config: dict[str, Any]  # the resolved config that trained it (its config.yaml)
    labels: list[str]
    tags: dict[str, str]  # of its run
    metrics: dict[str, float]  # of its run


def fetch_member(model_uri: str, tracking_uri: str, into: Path) -> Member:
    """Copies the model ``model_uri`` to the directory ``into`` and reads what it was trained
    on; a missing run or model, or a model that is not one of ours, is one TextclfError."""
    from mlflow.exceptions import MlflowException

    from textclf.tracking import TrackingStore, mlflow_tracking_uri, store_errors

    try:
        with mlflow_tracking_uri(tracking_uri), store_errors(tracking_uri):
            download = into.with_name(f"{into.name}.download")
            local = Path(shutil.move(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(download)), into))
            run_id = mlflow.models.Model.load(str(local)).run_id
            run = TrackingStore(tracking_uri).get_run(run_id) if run_id else None
    except (MlflowException, OSError) as error:
        raise TextclfError(f"cannot load model {model_uri} from {tracking_uri}: {first_line(error)}") from error
    config, labels = local / CONFIG_ARTIFACT, local / MEMBER_LABELS_ARTIFACT
    if not config.is_file() or not labels.is_file():
        raise TextclfError(
            f"{model_uri}: not a model a training logged (it has no {CONFIG_ARTIFACT}; an ensemble is no member: "
            "give its members)"
        )
    if (local / MEMBER_THRESHOLDS_ARTIFACT).is_file():
        raise TextclfError(
            f"{model_uri}: a multi-label model (it ships {MEMBER_THRESHOLDS_ARTIFACT}); an ensemble combines "
            "single-label models only"
        )
    return Member(
        model_uri,
        run_id,
        local,
        yaml.safe_load(config.read_text(encoding="utf-8")),
        json.loads(labels.read_text(encoding="utf-8")),
        dict(run.data.tags) if run is not None else {},
        dict(run.data.metrics) if run is not None else {},
    )


def _data_settings(member: Member) -> dict[str, Any]:
    from textclf.config import DataConfig, flatten

    # A key a member's logged config lacks (logged before it existed) has DataConfig's default,
    # as that config is read everywhere else.
    defaults = {name: field.default for name, field in DataConfig.model_fields.items() if not field.is_required()}
    data = defaults | (member.config.get("data") or {})
    return {f"data.{key}": value for key, value in flatten(data).items() if key not in WHERE_NOT_WHAT}


def _tag(member: Member, name: str) -> str | None:
    """A run tag of the member's; None when its run did not record it (older runs, "None")."""
    value = member.tags.get(name)
    return None if value in (None, "None") else value


def check_members(members: list[Member]) -> None:
    """Refuses, in one line, members not trained on the same data and split."""
    uris = [member.model_uri for member in members]
    if len(members) < 2:
        raise TextclfError("an ensemble needs at least two members (give --run-id or --model-uri twice or more)")
    repeated = next((uri for i, uri in enumerate(uris) if uri in uris[:i]), None)
    if repeated is not None:
        raise TextclfError(f"{repeated} is given twice (each member once)")
    first, reference = members[0], _data_settings(members[0])
    for member in members[1:]:
        settings = _data_settings(member)
        for key in sorted(reference.keys() | settings.keys()):
            if reference.get(key) != settings.get(key):
                raise TextclfError(
                    f"members trained on different data: {key} is {reference.get(key)!r} for {first.model_uri} "
                    f"and {settings.get(key)!r} for {member.model_uri} (an ensemble's members share their data and "
                    f"split: retrain {member.model_uri} with {key}={reference.get(key)!r})"
                )
        ours, theirs = _tag(first, "data_content_sha256"), _tag(member, "data_content_sha256")
        if ours is not None and theirs is not None and ours != theirs:
            raise TextclfError(
                f"members trained on different data: {first.model_uri} read content {ours[:12]}..., "
                f"{member.model_uri} read {theirs[:12]}... (the corpus changed between their trainings: "
                "retrain one on the other's data)"
            )
        ours, theirs = _tag(first, HELD_OUT_TAG), _tag(member, HELD_OUT_TAG)
        if ours is not None and theirs is not None and ours != theirs:
            raise TextclfError(
                f"members validated and tested on different documents: {first.model_uri} held out "
                f"{ours[:12]}..., {member.model_uri} {theirs[:12]}... (same settings, other split: the source's "
                "document order changed between their trainings; retrain one on the other's data)"
            )
        if member.labels != first.labels:
            raise TextclfError(
                f"members with different classes: {first.model_uri} has {first.labels[:4]}..., "
                f"{member.model_uri} has {member.labels[:4]}... (retrain them on the same data)"
            )


def held_out_documents(member: Member, raw: Path | None):  # noqa: ANN201 - textclf.data.splits.HeldOut
    """The validation and test documents the members were trained and tested on, read from
    ``raw`` (default: the member's paths.raw) and checked against what the member recorded."""
    from textclf.config import DataConfig
    from textclf.data.sources.base import RECORD_FILE
    from textclf.data.splits import read_held_out
    from textclf.metrics import TEST_PREFIX

    raw = raw if raw is not None else Path(member.config.get("paths", {}).get("raw", "data/raw"))
    record_file = raw / RECORD_FILE
    if not record_file.is_file():
        raise TextclfError(
            f"{record_file}: not found, so the members' data is not downloaded there (run the download stage "
            "with their data settings, or give --raw <the directory it wrote>)"
        )
    content = json.loads(record_file.read_text(encoding="utf-8")).get("content_sha256")
    trained = member.tags.get("data_content_sha256")
    if trained not in (None, "None") and content != trained:
        raise TextclfError(
            f"{raw} holds other data than the members were trained on (content {str(content)[:12]}..., not "
            f"{trained[:12]}...): run the download stage with their data settings, or give --raw"
        )
    try:
        data = DataConfig.model_validate(member.config["data"])
    except (KeyError, ValueError) as error:
        raise TextclfError(
            f"{member.model_uri}: its config.yaml has no valid data section ({first_line(error)})"
        ) from error
    held = read_held_out(data, raw)
    if held.classes != member.labels:
        raise TextclfError(f"{raw}: its classes {held.classes[:4]}... are not the members' {member.labels[:4]}...")
    recorded = _tag(member, HELD_OUT_TAG)
    if recorded is not None and held.sha256 != recorded:
        raise TextclfError(
            f"{raw}: its validation and test documents are not the ones {member.model_uri} was trained and "
            f"tested on (held out {held.sha256[:12]}..., not {recorded[:12]}...): the source's documents or their "
            "order changed; run the download stage again with the members' settings, or give --raw"
        )
    logged = member.metrics.get(f"{TEST_PREFIX}num_test")
    if logged is not None and int(logged) != len(held.texts["test"]):
        raise TextclfError(
            f"{raw}: {len(held.texts['test'])} test documents, but {member.model_uri} was tested on {int(logged)} "
            "(the data changed since: run the download stage again with the members' settings)"
        )
    return held


# --- the ensemble run -----------------------------------------------------------------------


def ensemble(
    model_uris: list[str],
    tracking_uri: str,
    summary_path: Path,
    raw: Path | None = None,
    how: str | None = None,
    experiment_name: str | None = None,
    run_name: str | None = None,
) -> dict[str, Any]:
    """Combines the models ``model_uris`` (see the module's docstring); logs the ensemble as a
    new run's ``model`` and writes ``summary_path``; returns the summary."""
    from textclf.atomic import write_json
    from textclf.metrics import ACCURACY
    from textclf.tracking import require_store

    if how is not None and how not in COMBINATIONS:
        raise TextclfError(f"combination {how!r}: expected one of {', '.join(COMBINATIONS)}")
    require_store(tracking_uri, write=True)
    with tempfile.TemporaryDirectory(prefix="textclf-ensemble-") as tmp:
        members = [
            fetch_member(uri, tracking_uri, Path(tmp) / MEMBER_ARTIFACT.format(i)) for i, uri in enumerate(model_uris)
        ]
        check_members(members)
        held = held_out_documents(members[0], raw)
        labels = {split: torch.from_numpy(held.labels[split]) for split in ("val", "test")}
        models = [load_member(member.directory) for member in members]
        val = torch.stack([member_probabilities(model, held.texts["val"], held.classes) for model in models])
        fitted = fit(val, labels["val"], how)  # the validation split alone chooses
        test = torch.stack([member_probabilities(model, held.texts["test"], held.classes) for model in models])
        weights = fitted["weights"]
        summary: dict[str, Any] = {
            "combine": fitted["combine"],
            "val_loss_by_combination": fitted["val_loss"],
            "num_val": len(held.texts["val"]),
            "num_test": len(held.texts["test"]),
            "val": scores(combine(val, weights, fitted["combine"]), labels["val"]),
            "test": scores(combine(test, weights, fitted["combine"]), labels["test"]),
            "members": [
                {
                    "model_uri": member.model_uri,
                    "run_id": member.run_id,
                    "weight": round(float(weight), 6),
                    "val": scores(val[i], labels["val"]),
                    "test": scores(test[i], labels["test"]),
                    "logged_test_accuracy": member.metrics.get(f"test/{ACCURACY}"),
                }
                for i, (member, weight) in enumerate(zip(members, weights.tolist()))
            ],
        }
        run_id = log_ensemble(
            tracking_uri, members, fitted, summary, held.classes, experiment_name, run_name, Path(tmp)
        )
    summary = {"run_id": run_id, "model_uri": f"runs:/{run_id}/model", **summary}
    write_json(summary_path, summary)
    return summary


def log_ensemble(
    uri: str,
    members: list[Member],
    fitted: dict[str, Any],
    summary: dict[str, Any],
    labels: list[str],
    experiment_name: str | None,
    run_name: str | None,
    staging: Path,
) -> str:
    """A new run holding the ensemble's metrics, weights, summary and ``model``; -> its id."""
    from mlflow.entities import Metric, Param

    from textclf.config import flatten
    from textclf.metrics import TEST_PREFIX, VAL_PREFIX
    from textclf.redact import redact_secrets
    from textclf.serving import log_pyfunc, pip_requirements
    from textclf.tracking import TrackingStore

    store = TrackingStore(uri)
    first = members[0]
    if experiment_name is not None:
        experiment_id = store.ensure_experiment(experiment_name)
    elif first.run_id is not None:
        experiment_id = store.get_run(first.run_id).info.experiment_id
    else:
        experiment_id = store.ensure_experiment(first.config.get("tracking", {}).get("experiment_name", "textclf"))
    tags = {
        "model": "Ensemble",
        "ensemble.members": ",".join(member.run_id or member.model_uri for member in members),
        "mlflow.source.git.commit": git_commit(project_root()) or "unknown",
        **{name: first.tags[name] for name in ("data_name", "data_content_sha256", HELD_OUT_TAG) if name in first.tags},
    }
    name = run_name or f"ensemble-{len(members)}-{fitted['combine']}"
    run_id = store.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    try:
        params = {
            "ensemble.combine": fitted["combine"],
            **{f"ensemble.member.{i}": member.model_uri for i, member in enumerate(members)},
            **{f"ensemble.weight.{i}": round(w, 6) for i, w in enumerate(fitted["weights"].tolist())},
            **redact_secrets(flatten({"data": first.config.get("data", {})})),
        }
        metrics = {f"{VAL_PREFIX}{key}": value for key, value in summary["val"].items()}
        metrics |= {f"{TEST_PREFIX}{key}": value for key, value in summary["test"].items()}
        for i, member in enumerate(summary["members"]):
            metrics |= {f"member{i}/{split}/{key}": v for split in ("val", "test") for key, v in member[split].items()}
        store.log_batch(
            run_id,
            metrics=[Metric(key, float(value), int(1000 * time.time()), 0) for key, value in metrics.items()],
            params=[Param(key, str(value)) for key, value in params.items()],
        )
        (staging / "evaluation").mkdir()
        (staging / "evaluation" / "ensemble.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        store.log_artifact(run_id, str(staging / "evaluation" / "ensemble.json"), artifact_path="evaluation")
        spec = {
            "combine": fitted["combine"],
            "weights": fitted["weights"].tolist(),
            "members": [member.model_uri for member in members],
        }
        (staging / ENSEMBLE_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        (staging / LABELS_FILE).write_text(json.dumps(labels, ensure_ascii=False) + "\n", encoding="utf-8")
        artifacts = {"ensemble": str(staging / ENSEMBLE_FILE), "labels": str(staging / LABELS_FILE)}
        artifacts |= {MEMBER_ARTIFACT.format(i): str(member.directory) for i, member in enumerate(members)}
        log_pyfunc(uri, run_id, MODEL_CODE, artifacts, labels, pip_requirements(member_requirements(members)))
    except BaseException:
        store.set_terminated(run_id, "FAILED")
        raise
    store.set_terminated(run_id)
    return run_id


def member_requirements(members: list[Member]) -> tuple[str, ...]:
    """The distributions the members' models pin (their requirements.txt), by name: pinned again
    to the versions installed here, where the ensemble was made and its members ran."""
    names: dict[str, None] = {}
    for member in members:
        path = member.directory / "requirements.txt"
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        for line in lines:
            name = line.split("#")[0].split(";")[0].split("==")[0].split(">=")[0].strip()
            if name and not name.startswith("-"):
                names[name] = None
    return tuple(names)


def describe(summary: dict[str, Any], summary_path: Path) -> str:
    """One line of what ``ensemble`` made: the model, the weights, validation and test scores."""
    members = summary["members"]
    weights = ", ".join(f"{member['weight']:.3f}" for member in members)
    val_losses = ", ".join(f"{member['val']['loss']:.4f}" for member in members)
    accuracies = ", ".join(f"{member['test']['accuracy']:.4f}" for member in members)
    return (
        f"ensemble: {summary['model_uri']} ({summary['combine']} of {len(members)} members, weights {weights}); "
        f"val loss {summary['val']['loss']:.4f} (members {val_losses}); test accuracy "
        f"{summary['test']['accuracy']:.4f} (members {accuracies}), macro-F1 {summary['test']['f1_macro']:.4f}; "
        f"summary in {summary_path}"
    )


# --- ensemble presets: a Hydra sweep of the members, then this ---------------------------------


class EnsembleCallback(Callback):
    """Ends an ensemble preset's sweep (conf/experiment/best.yaml: one job per member, each the
    whole pipeline, skipped when it already has a finished run, as any sweep's jobs) by combining
    the members' runs: the jobs' runs (their job.json) go to ``ensemble``, with the raw data the
    jobs shared; the summary lands in the sweep directory as ensemble.json, the ensemble in MLflow
    as a new run of the members' experiment."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from textclf.__main__ import JOB_FILE
        from textclf.config import validate
        from textclf.pipeline import raw_directory
        from textclf.tracking import tracking_uri

        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sorted(sweep_dir.glob(f"*/{JOB_FILE}"), key=lambda path: path.parent.name)
        if len(jobs) < 2:
            raise TextclfError(f"{sweep_dir}: {len(jobs)} finished member jobs, an ensemble needs two or more")
        run_ids = [json.loads(job.read_text(encoding="utf-8"))["run_id"] for job in jobs]
        job_config = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
        cfg = validate(job_config, source="ensemble preset")  # the sweep's config: the members' shared data
        combine_how = cfg.ensemble.combine if cfg.ensemble is not None else None
        summary_path = sweep_dir / ENSEMBLE_SUMMARY
        summary = ensemble(
            [f"runs:/{run_id}/model" for run_id in run_ids],
            tracking_uri(cfg.tracking),
            summary_path,
            raw=raw_directory(cfg),
            how=combine_how,
        )
        print(describe(summary, summary_path), flush=True)


def main(argv: list[str] | None = None) -> None:
    from textclf.predict import run_model_uri
    from textclf.tracking import default_tracking_uri

    parser = argparse.ArgumentParser(
        prog="python -m textclf.ensemble", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run-id", dest="members", action="append", type=run_model_uri, help="a member: the model this run logged"
    )
    parser.add_argument("--model-uri", dest="members", action="append", help="a member: any MLflow model URI")
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument(
        "--raw", type=Path, help="the download stage's output for the members' data (default: their paths.raw)"
    )
    parser.add_argument("--combine", choices=COMBINATIONS, help="default: the one with the lower validation NLL")
    parser.add_argument(
        "--summary", type=Path, default=SUMMARY_DEFAULT, help="JSON summary written here (default: %(default)s)"
    )
    parser.add_argument("--experiment-name", help="the new run's experiment (default: the first member's)")
    parser.add_argument("--run-name", help="the new run's name (default: ensemble-<members>-<combination>)")
    args = parser.parse_args(argv)
    if not args.members or len(args.members) < 2:
        parser.error("give at least two members (--run-id or --model-uri, each repeatable)")

    def command() -> None:
        uri = args.tracking_uri or default_tracking_uri()
        summary = ensemble(args.members, uri, args.summary, args.raw, args.combine, args.experiment_name, args.run_name)
        print(describe(summary, args.summary))

    run_cli("ensemble", command)


if __name__ == "__main__":
    main()
