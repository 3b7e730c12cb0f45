"""`python -m textclf.tune`: an Optuna search over Hydra overrides, its trials nested MLflow
runs, pruned by Optuna's Lightning callback, and continued by rerunning the command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from textclf.tune import (
    BEST_METRIC,
    BEST_TAG,
    PARENT_RUN_ATTR,
    RUN_ID_ATTR,
    SEARCH_KEY,
    STATE_TAG,
    check_space,
    compose_tune,
    load_search,
    tune,
)

from conftest import REPO_ROOT, shrink_overrides, subprocess_env


def search_overrides(tmp_path: Path, tiny_archive: tuple[Path, str], *extra: str) -> list[str]:
    """The real config shrunk to the tiny corpus; the study, its trials and the data cache in tmp_path."""
    archive, sha256 = tiny_archive
    paths = [f"paths.{name}={tmp_path / name}" for name in ("raw", "processed", "models", "reports", "cache")]
    return [
        *shrink_overrides(archive, sha256),
        *paths,
        f"{SEARCH_KEY}.storage=sqlite:///{tmp_path / 'optuna.db'}",
        f"{SEARCH_KEY}.output_dir={tmp_path / 'tune'}",
        *extra,
    ]


def search_runs(uri: str) -> tuple[list, list]:
    """(parent runs, child runs) of the store's textclf experiment."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    parents = [r for r in runs if r.data.tags.get("textclf.role") == "search"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "conf" / SEARCH_KEY).glob("*.yaml")), ids=lambda p: p.stem)
def test_every_search_space_composes_and_validates_at_its_ends(path: Path) -> None:
    overrides = [f"{SEARCH_KEY}={path.stem}"]
    composed = compose_tune(overrides, REPO_ROOT)
    _, space = load_search(OmegaConf.to_container(composed[SEARCH_KEY], resolve=True))
    assert space
    check_space(overrides, REPO_ROOT, space)


@pytest.mark.slow
def test_a_search_nests_its_trials_under_one_run_tags_the_best_and_continues(
    tmp_path: Path, tiny_archive, mlflow_uri: str
) -> None:
    overrides = search_overrides(tmp_path, tiny_archive)
    study = tune([*overrides, f"{SEARCH_KEY}.n_trials=3"], root=REPO_ROOT)

    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    parents, children = search_runs(mlflow_uri)
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.run_id == study.user_attrs[PARENT_RUN_ATTR]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" and c.data.tags[STATE_TAG] == "COMPLETE" for c in children)
    assert {c.info.run_id for c in children} == {t.user_attrs[RUN_ID_ATTR] for t in study.trials}
    best = [c for c in children if c.data.tags.get(BEST_TAG) == "true"]
    assert [b.info.run_id for b in best] == [study.best_trial.user_attrs[RUN_ID_ATTR]]
    assert parent.data.metrics[BEST_METRIC] == pytest.approx(study.best_value)
    assert parent.data.tags["best_trial.number"] == str(study.best_trial.number)
    assert f"optimizer.lr={study.best_trial.params['optimizer.lr']!r}" in parent.data.tags["best_trial.overrides"]
    # Trials share one preprocessed dataset, as the jobs of a Hydra sweep do.
    assert len(list((tmp_path / "cache" / "processed").glob("*/manifest.json"))) == 1

    # The same command with a larger n_trials continues the study: one more trial, same parent.
    first = {t.number: (t.params, t.user_attrs[RUN_ID_ATTR]) for t in study.trials}
    study = tune([*overrides, f"{SEARCH_KEY}.n_trials=4"], root=REPO_ROOT)
    assert len(study.trials) == 4
    assert {t.number: (t.params, t.user_attrs[RUN_ID_ATTR]) for t in study.trials[:3]} == first
    assert study.trials[3].params != study.trials[0].params  # a resumed sampler draws new values
    parents, children = search_runs(mlflow_uri)
    assert [p.info.run_id for p in parents] == [parent.info.run_id] and len(children) == 4
    assert sum(c.data.tags.get(BEST_TAG) == "true" for c in children) == 1

    # Rerun once n_trials trials have finished: nothing trains.
    study = tune([*overrides, f"{SEARCH_KEY}.n_trials=4"], root=REPO_ROOT)
    assert len(study.trials) == 4 and len(search_runs(mlflow_uri)[1]) == 4


PRUNE_EVERYTHING = {
    "study_name": "prune_everything",
    "storage": None,
    "n_trials": 2,
    "timeout": None,
    "output_dir": "tune/prune_everything",
    "heartbeat_interval": None,
    "grace_period": None,
    "sampler": {"_target_": "optuna.samplers.RandomSampler", "seed": 0},
    # val/f1_macro is at most 1, so every trial is pruned at its first report (epoch 0).
    "pruner": {"_target_": "optuna.pruners.ThresholdPruner", "lower": 1.1},
    "params": {"optimizer.lr": {"_target_": "optuna.distributions.FloatDistribution", "low": 0.01, "high": 0.1}},
}


def test_a_pruned_trial_stops_after_its_first_epoch_and_is_recorded_as_pruned(
    tmp_path: Path, tiny_archive, mlflow_uri: str
) -> None:
    shutil.copytree(REPO_ROOT / "conf", tmp_path / "conf")
    (tmp_path / "conf" / SEARCH_KEY / "prune_everything.yaml").write_text(yaml.safe_dump(PRUNE_EVERYTHING))
    study = tune(search_overrides(tmp_path, tiny_archive, f"{SEARCH_KEY}=prune_everything"), root=tmp_path)

    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    assert [list(t.intermediate_values) for t in study.trials] == [[0], [0]]
    parents, children = search_runs(mlflow_uri)
    assert len(parents) == 1 and len(children) == 2
    assert all(c.info.status == "KILLED" and c.data.tags[STATE_TAG] == "PRUNED" for c in children)
    assert not any(BEST_TAG in c.data.tags for c in children) and BEST_METRIC not in parents[0].data.metrics
    client = MlflowClient(mlflow_uri)
    assert [len(client.get_metric_history(c.info.run_id, "val/f1_macro")) for c in children] == [1, 1]


def test_a_bad_search_setting_stops_the_command_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "textclf.tune", f"{SEARCH_KEY}.n_trials=0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db"),
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: [tune] invalid {SEARCH_KEY} (conf/{SEARCH_KEY}/): {SEARCH_KEY}.n_trials: input should be greater than 0 (got 0)"
    ]
    assert not (tmp_path / "m.db").exists()
