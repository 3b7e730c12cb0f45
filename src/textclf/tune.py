"""`python -m textclf.tune`: Optuna hyperparameter search over Hydra overrides.

    python -m textclf.tune                                   # hparams_search=fasttext (conf/tune.yaml)
    python -m textclf.tune hparams_search=models hparams_search.n_trials=50 trainer.max_epochs=8
    python -m textclf.tune --help

Composes conf/tune.yaml: the pipeline's config plus one ``hparams_search`` entry (study settings,
sampler, pruner and a space of Hydra overrides, each an Optuna distribution). Each trial
composes the config again with its sampled overrides (``optimizer.lr=0.0123``, ``model=lstm``)
and runs the whole pipeline as `python -m textclf` would, on the shared data cache; its
objective is the best value of ``train.monitor`` (default ``val/f1_macro``, maximized; a loss
is minimized). Optuna's Lightning callback reports that metric every epoch and stops trials
the pruner gives up on.

The study lives in an RDB storage (default: ``optuna.db`` beside ``mlflow.db``): rerunning the
same command continues it, and ``n_trials`` counts every finished trial (complete or pruned),
those of earlier invocations included. In MLflow, the search is one parent run (its id is a
user attribute of the study, so a resumed search reuses it) with every trial a child run
(``mlflow.parentRunId``); the best trial's run is tagged ``textclf.best_trial=true`` and the
parent holds the best value, trial and overrides.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import PyTorchLightningPruningCallback
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from textclf.config import (
    Config,
    PositiveFloat,
    PositiveInt,
    _format_pydantic,
    credential_problems,
    validate,
)
from textclf.errors import TextclfError, describe_composition_error, run_cli
from textclf.metrics import mode
from textclf.models.classifier import NonFiniteLoss
from textclf.params import compose
from textclf.pipeline import run_pipeline
from textclf.provenance import project_root
from textclf.redact import mask_userinfo
from textclf.tracking import TrackingStore, check_tracking_uri, tracking_uri

TUNE_CONFIG = "tune"  # conf/tune.yaml
SEARCH_KEY = "hparams_search"
DEFAULT_STORAGE = "optuna.db"  # at the repository root, beside mlflow.db
# Study and trial user attributes.
PARENT_RUN_ATTR = "mlflow_parent_run_id"
RUN_ID_ATTR = "mlflow_run_id"
OVERRIDES_ATTR = "overrides"
# MLflow tags.
STUDY_TAG = "textclf.study"
TRIAL_TAG = "textclf.trial_number"
STATE_TAG = "textclf.trial_state"
BEST_TAG = "textclf.best_trial"
BEST_METRIC = "best_score"  # the best trial's value of train.monitor
# MLflow status of a trial's run once Optuna has settled the trial.
RUN_STATUS = {TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}
DISTRIBUTIONS = (FloatDistribution, IntDistribution, CategoricalDistribution)


class SearchConfig(BaseModel):
    """The ``hparams_search`` section: every key required (defaults live in conf/)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study_name: str = Field(min_length=1)
    storage: str | None
    n_trials: PositiveInt
    timeout: PositiveFloat | None
    output_dir: Path
    heartbeat_interval: PositiveInt | None
    grace_period: PositiveInt | None
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    params: dict[str, dict[str, Any] | None]


def _build(key: str, values: dict[str, Any], expected: tuple[type, ...]) -> tuple[Any, list[str]]:
    """``instantiate(values)``, or the one-line problem that names ``key``."""
    target = values.get("_target_")
    if not isinstance(target, str):
        return None, [f"{key}._target_: missing (the class to build)"]
    try:
        built = instantiate(values)
    except Exception as error:  # noqa: BLE001 - Hydra wraps import and constructor errors alike
        reason = " ".join(str(error.__cause__ or error).split())
        return None, [f"{key}: cannot build {target} ({reason})"]
    if not isinstance(built, expected):
        names = ", ".join(cls.__qualname__ for cls in expected)
        return None, [f"{key}: {target} is not one of {names}"]
    return built, []


def load_search(values: Any) -> tuple[SearchConfig, dict[str, BaseDistribution]]:
    """Validates ``hparams_search`` and builds its space; one TextclfError lists every problem."""
    source = f"{SEARCH_KEY} (conf/{SEARCH_KEY}/)"
    if not isinstance(values, dict):
        raise TextclfError(f"invalid {source}: expected a mapping, got {values!r}")
    try:
        settings = SearchConfig.model_validate(values)
    except ValidationError as error:
        raise TextclfError(
            f"invalid {source}: " + "; ".join(f"{SEARCH_KEY}.{line}" for line in _format_pydantic(error))
        ) from error
    problems: list[str] = credential_problems({SEARCH_KEY: values})  # storage: postgresql://u:pw@...
    if (settings.heartbeat_interval is None) != (settings.grace_period is None):
        problems.append(f"{SEARCH_KEY}.grace_period: set both heartbeat_interval and grace_period, or neither")
    for key, expected in (("sampler", (optuna.samplers.BaseSampler,)), ("pruner", (optuna.pruners.BasePruner,))):
        problems += _build(f"{SEARCH_KEY}.{key}", getattr(settings, key), expected)[1]
    space: dict[str, BaseDistribution] = {}
    for name, spec in settings.params.items():
        if spec is None:  # an entry set to null (e.g. by a config that extends another) is not searched
            continue
        distribution, found = _build(f"{SEARCH_KEY}.params.{name}", spec, DISTRIBUTIONS)
        problems += found
        if distribution is not None:
            space[name] = distribution
    if not space and not problems:
        problems.append(f"{SEARCH_KEY}.params: empty (nothing to search)")
    if problems:
        raise TextclfError(f"invalid {source}: " + "; ".join(problems))
    return settings, space


_PLAIN = re.compile(r"^[A-Za-z_][\w.\-/]*$")


def hydra_value(value: Any) -> str:
    """A sampled value as Hydra override syntax: 0.01, 64, true, null, tfidf, 'two words'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in ("true", "false", "null"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def suggest_overrides(trial: optuna.Trial, space: dict[str, BaseDistribution]) -> list[str]:
    """Samples every parameter of ``space``; returns the trial's Hydra overrides."""
    overrides = []
    for name, distribution in space.items():
        if isinstance(distribution, FloatDistribution):
            value: Any = trial.suggest_float(
                name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
            )
        elif isinstance(distribution, IntDistribution):
            value = trial.suggest_int(
                name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
            )
        else:
            value = trial.suggest_categorical(name, distribution.choices)
        overrides.append(f"{name}={hydra_value(value)}")
    return overrides


def compose_tune(overrides: list[str], root: Path | None) -> DictConfig:
    try:
        return compose(overrides, root=root, config_name=TUNE_CONFIG)
    except (HydraException, OmegaConfBaseException) as error:
        raise TextclfError(describe_composition_error(error)) from error


def pipeline_config(composed: DictConfig, source: str) -> Config:
    """The composed tune config less ``hparams_search``: what one `python -m textclf` job gets."""
    pipeline = OmegaConf.masked_copy(composed, [key for key in composed if key != SEARCH_KEY])
    cfg = validate(pipeline, source=source)
    devices, nodes = cfg.trainer.devices, cfg.trainer.num_nodes
    if nodes != 1 or not (devices in (1, "1") or (isinstance(devices, list) and len(devices) == 1)):
        raise TextclfError(
            f"{source}: a trial trains in one process on one device (DDP ranks would rerun the whole "
            f"search): set trainer.devices=1 trainer.num_nodes=1 (got devices={devices!r}, num_nodes={nodes})"
        )
    return cfg


def check_space(overrides: list[str], root: Path | None, space: dict[str, BaseDistribution]) -> None:
    """Fails before any trial when a point of ``space`` does not compose or validate: every
    numeric parameter at its low end, then at its high end, then each categorical choice."""

    def point(pick: Callable[[BaseDistribution], Any]) -> dict[str, Any]:
        return {name: pick(d) for name, d in space.items()}

    def first(d: BaseDistribution) -> Any:
        return d.choices[0] if isinstance(d, CategoricalDistribution) else d.low

    points = [point(first), point(lambda d: d.choices[0] if isinstance(d, CategoricalDistribution) else d.high)]
    for name, distribution in space.items():
        if isinstance(distribution, CategoricalDistribution):
            points += [{**points[0], name: choice} for choice in distribution.choices[1:]]
    for values in points:
        trial_overrides = [f"{name}={hydra_value(value)}" for name, value in values.items()]
        source = f"{SEARCH_KEY}.params at {' '.join(trial_overrides)}"
        try:
            pipeline_config(compose_tune([*overrides, *trial_overrides], root), source)
        except TextclfError as error:
            message = str(error)
            raise TextclfError(message if source in message else f"{source}: {message}") from error


def storage_url(settings: SearchConfig) -> str:
    """hparams_search.storage, else sqlite:///<repository root>/optuna.db (beside mlflow.db)."""
    if settings.storage is not None:
        return settings.storage
    return f"sqlite:///{project_root() / DEFAULT_STORAGE}"


class TrialPruning(PyTorchLightningPruningCallback):
    """Optuna's Lightning pruning callback (reports ``monitor`` after every validation and
    raises TrialPruned when the pruner says so) that also records the trial's MLflow run id
    as soon as the run exists, so even an interrupted trial can be found in MLflow."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        super().__init__(trial, monitor)
        self.trial = trial

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if trainer.is_global_zero and trainer.logger is not None:
            self.trial.set_user_attr(RUN_ID_ATTR, trainer.logger.run_id)


class SearchRuns:
    """The search's MLflow side: one parent run, one child run per trial."""

    def __init__(
        self, cfg: Config, study: optuna.Study, settings: SearchConfig, storage: str, space: dict[str, BaseDistribution]
    ) -> None:
        uri = tracking_uri(cfg.tracking)
        check_tracking_uri(uri)
        self.store = TrackingStore(uri)
        self.experiment_id = self.store.ensure_experiment(cfg.tracking.experiment_name)
        self.study_name = settings.study_name
        self.parent_run_id = self._parent_run(study)
        space_json = json.dumps({name: json.loads(distribution_to_json(d)) for name, d in space.items()})
        for key, value in (
            ("optuna.storage", mask_userinfo(storage)),
            ("textclf.search_space", space_json),
            ("textclf.n_trials", str(settings.n_trials)),
            ("textclf.monitor", cfg.train.monitor),  # what BEST_METRIC is the best of
        ):
            self.store.set_tag(self.parent_run_id, key, value)

    def _parent_run(self, study: optuna.Study) -> str:
        """The run the study recorded, running again; a new one for a new study (or store)."""
        from mlflow.exceptions import MlflowException

        run_id = study.user_attrs.get(PARENT_RUN_ATTR)
        if run_id is not None:
            try:
                run = self.store.get_run(run_id)
            except MlflowException:  # another tracking store, or the run was purged
                run = None
            reusable = run is not None and run.info.lifecycle_stage == "active"
            if reusable and run.info.experiment_id == self.experiment_id:
                self.store.update_run(run_id, status="RUNNING")
                return run_id
        run = self.store.create_run(
            self.experiment_id,
            run_name=f"tune-{self.study_name}",
            tags={STUDY_TAG: self.study_name, "textclf.role": "search"},
        )
        study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
        return run.info.run_id

    def trial_tags(self, trial: optuna.Trial, overrides: list[str]) -> dict[str, str]:
        return {
            "mlflow.parentRunId": self.parent_run_id,
            "mlflow.runName": f"{self.study_name}-trial-{trial.number}",  # unless tracking.run_name is set
            STUDY_TAG: self.study_name,
            TRIAL_TAG: str(trial.number),
            "hydra.overrides": " ".join(overrides),
        }

    def record(self, study: optuna.Study, *_: Any) -> None:
        """Brings the runs in line with the study: each child's state tag and status, the best
        trial's tag, and the best value, trial and overrides on the parent. Idempotent; an
        Optuna callback after every trial and the last step of every invocation."""
        children = self.store.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
            max_results=50000,
        )
        runs = {run.info.run_id: run for run in children}
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        best = study.best_trial if complete else None  # by the study's direction
        for trial in study.trials:
            run = runs.get(trial.user_attrs.get(RUN_ID_ATTR, ""))
            if run is None or trial.state == TrialState.RUNNING:
                continue
            self._set_tag(run, STATE_TAG, trial.state.name)
            status = RUN_STATUS.get(trial.state)
            if status is not None and run.info.status != status:
                self.store.set_terminated(run.info.run_id, status)
            is_best = best is not None and trial.number == best.number
            if is_best:
                self._set_tag(run, BEST_TAG, "true")
            elif BEST_TAG in run.data.tags:
                self.store.delete_tag(run.info.run_id, BEST_TAG)
        if best is None:
            return
        parent = self.parent_run_id
        self.store.log_metric(parent, BEST_METRIC, float(best.value), step=len(complete))
        for key, value in {
            "best_trial.number": str(best.number),
            "best_trial.run_id": best.user_attrs.get(RUN_ID_ATTR, "unknown"),
            "best_trial.overrides": " ".join(best.user_attrs.get(OVERRIDES_ATTR, [])),
            **{f"best.{name}": str(value) for name, value in best.params.items()},
        }.items():
            self.store.set_tag(parent, key, value)

    def _set_tag(self, run: Any, key: str, value: str) -> None:
        if run.data.tags.get(key) != value:
            self.store.set_tag(run.info.run_id, key, value)

    def fail_stale_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna's callback for a trial whose process died (no heartbeat): its run is KILLED."""
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id is not None:
            self.store.set_terminated(run_id, "KILLED")

    def finish(self, status: str) -> None:
        self.store.set_terminated(self.parent_run_id, status)


def open_study(
    settings: SearchConfig,
    storage: str,
    on_stale_trial: Callable[[optuna.Study, FrozenTrial], None],
    direction: str = "maximize",
) -> optuna.Study:
    """Creates the study, or loads it to continue; its sampler seed is offset by the number of
    trials it holds, so a resumed search does not draw its first values again. ``direction``
    (maximize, minimize) is train.monitor's: a loaded study must optimize the same way."""
    database = storage.removeprefix("sqlite:///") if storage.startswith("sqlite:///") else None
    if database is not None and not Path(database).parent.is_dir():
        raise TextclfError(f"{SEARCH_KEY}.storage {storage}: directory {Path(database).parent} does not exist")
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 4
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = optuna.storages.RDBStorage(
                storage,
                engine_kwargs={"connect_args": {"timeout": 60}} if database is not None else None,
                heartbeat_interval=settings.heartbeat_interval,
                grace_period=settings.grace_period,
                heartbeat_stale_trial_callback=on_stale_trial,
            )
    except Exception as error:  # sqlalchemy's errors for a bad URL, driver or server
        reason = " ".join(str(error).split())
        raise TextclfError(f"{SEARCH_KEY}.storage {mask_userinfo(storage)}: cannot open ({reason})") from error
    study = optuna.create_study(study_name=settings.study_name, storage=rdb, direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise TextclfError(
            f"study {settings.study_name!r} in {mask_userinfo(storage)} is set to {study.direction.name.lower()}; "
            f"this train.monitor needs {direction} (pick another {SEARCH_KEY}.study_name)"
        )
    sampler = dict(settings.sampler)
    if sampler.get("seed") is not None:
        sampler["seed"] = int(sampler["seed"]) + len(study.trials)
    study.sampler = instantiate(sampler)
    study.pruner = instantiate(settings.pruner)
    return study


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def tune(overrides: list[str], root: Path | None = None) -> optuna.Study:
    """Runs (or continues) the search that conf/tune.yaml + ``overrides`` describe, in the
    repository at ``root`` (default: the current directory); returns the study."""
    composed = compose_tune(overrides, root)
    settings, space = load_search(OmegaConf.to_container(composed[SEARCH_KEY], resolve=True))
    base = pipeline_config(composed, source="config")
    check_space(overrides, root, space)
    storage = storage_url(settings)
    runs: SearchRuns | None = None

    def on_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        if runs is not None:
            runs.fail_stale_trial(study, trial)

    monitor = base.train.monitor
    study = open_study(settings, storage, on_stale_trial, "maximize" if mode(monitor) == "max" else "minimize")
    runs = SearchRuns(base, study, settings, storage, space)

    def objective(trial: optuna.Trial) -> float:
        trial_overrides = suggest_overrides(trial, space)
        trial.set_user_attr(OVERRIDES_ATTR, trial_overrides)
        composed = compose_tune([*overrides, *trial_overrides], root)
        cfg = pipeline_config(composed, source=f"trial {trial.number}")
        job_dir = settings.output_dir / f"trial_{trial.number}"
        try:
            tags = runs.trial_tags(trial, trial_overrides)
            summary = run_pipeline(cfg, job_dir, tags=tags, callbacks=[TrialPruning(trial, monitor)])
        except SystemExit as error:  # Lightning turns Ctrl-C into exit(1): Optuna must see the interrupt
            raise KeyboardInterrupt from error
        return float(summary["best_score"])

    remaining = settings.n_trials - finished_trials(study)
    status = "FAILED"
    try:
        if remaining > 0:
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=settings.timeout,
                catch=(NonFiniteLoss,),  # a diverged trial is a result (FAIL), not a reason to stop
                callbacks=[runs.record],
            )
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        runs.record(study)
        runs.finish(status)
    return study


def describe(study: optuna.Study) -> str:
    """One line: trials by state and the best trial (its value, overrides and MLflow run)."""
    counts = {state: len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
    line = f"study {study.study_name}: " + ", ".join(
        f"{count} {state.name.lower()}" for state, count in counts.items() if count
    )
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        overrides = " ".join(best.user_attrs.get(OVERRIDES_ATTR, []))
        line += (
            f"; best trial {best.number}: {best.value:.4f} with {overrides}"
            f" (MLflow run {best.user_attrs.get(RUN_ID_ATTR)})"
        )
    return line


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in args):
        print(__doc__)
        return

    def command() -> None:
        print(f"tune: {describe(tune(args))}")

    run_cli("tune", command, interrupted="interrupted; run the same command again to continue the study")


if __name__ == "__main__":
    main()
