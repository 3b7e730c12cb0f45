"""TrackingStore: the one way the project reaches an MLflow store, and the experiments it makes."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from textclf.errors import TextclfError
from textclf.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING, TrackingStore


def test_a_new_experiment_is_marked_as_model_training_so_the_ui_opens_on_its_runs(mlflow_uri: str) -> None:
    experiment_id = TrackingStore(mlflow_uri).ensure_experiment("fresh")
    assert MlflowClient(mlflow_uri).get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING


def test_an_existing_experiment_without_a_kind_gets_the_mark_and_one_with_a_kind_keeps_it(mlflow_uri: str) -> None:
    client = MlflowClient(mlflow_uri)
    unmarked = client.create_experiment("made-by-an-older-textclf")
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    store = TrackingStore(mlflow_uri)
    assert store.ensure_experiment("made-by-an-older-textclf") == unmarked
    assert store.ensure_experiment("chosen") == chosen
    assert client.get_experiment(unmarked).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_every_client_method_is_a_store_method_and_a_missing_run_keeps_mlflows_error(mlflow_uri: str) -> None:
    store = TrackingStore(mlflow_uri)
    run = store.create_run(store.ensure_experiment("methods"))
    store.set_tag(run.info.run_id, "answer", "42")
    assert store.get_run(run.info.run_id).data.tags["answer"] == "42"
    assert store.set_tag.__name__ == "set_tag"  # the client's method, wrapped
    with pytest.raises(MlflowException):  # not a failure of the store: callers tell "no such run" apart
        store.get_run("0" * 32)
    with pytest.raises(AttributeError):
        store.no_such_method  # noqa: B018


def test_a_store_that_is_not_a_database_fails_any_call_in_one_line_naming_it(tmp_path: Path) -> None:
    database = tmp_path / "mlflow.db"
    database.write_bytes(b"not a database, " * 256)
    uri = f"sqlite:///{database}"
    with pytest.raises(TextclfError, match="not an SQLite database") as error:
        TrackingStore(uri).search_experiments()
    assert str(database) in str(error.value) and "\n" not in str(error.value)
