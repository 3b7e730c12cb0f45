"""`python -m textclf.compare`: the best runs of a store, filtered, ranked and tabulated."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from textclf.compare import KEY_PARAMS, METRICS, best_runs, main
from textclf.errors import TextclfError

# (run name, model tag, optimizer.lr, test/accuracy or None for a run never evaluated)
RUNS = [
    ("ft-slow", "FastText", "0.001", 0.80),
    ("ft-fast", "FastText", "0.05", 0.90),
    ("lstm", "LSTMClassifier", "0.001", 0.95),
    ("ft-unevaluated", "FastText", "0.1", None),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store with RUNS in experiment 'textclf', as train and evaluate would log them (made
    once: creating a SQLite store takes seconds, and these tests only read it)."""
    tmp_path = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("textclf", artifact_location=(tmp_path / "artifacts").as_uri())
    for step, (name, model, lr, accuracy) in enumerate(RUNS):
        run = client.create_run(experiment, run_name=name, start_time=1000 + step)
        params = {
            "optimizer._target_": "torch.optim.Adam",
            "optimizer.lr": lr,
            "trainer.max_epochs": "3",
            "train.batch_size": "8",
            "model.embed_dim": "8",
        }
        metrics = {"val/f1_macro": 0.5}
        if accuracy is not None:
            metrics.update({"test/accuracy": accuracy, "test/f1_macro": accuracy - 0.05, "test/loss": 1 - accuracy})
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(key, value, 0, 0) for key, value in metrics.items()],
            params=[Param(key, value) for key, value in params.items()],
            tags=[RunTag("model", model)],
        )
        client.set_terminated(run.info.run_id)
    return uri


def test_runs_come_best_first_with_their_key_params_and_metrics(store: str) -> None:
    rows = best_runs(store)
    assert [row["run_name"] for row in rows] == ["lstm", "ft-fast", "ft-slow", "ft-unevaluated"]
    assert list(rows[0]) == [
        "run_id",
        "run_name",
        "model",
        "optimizer",
        "optimizer.lr",
        "trainer.max_epochs",
        "train.batch_size",
        "model.embed_dim",
        "val/f1_macro",
        "test/accuracy",
        "test/f1_macro",
    ]
    assert rows[0]["model"] == "LSTMClassifier" and rows[0]["optimizer"] == "Adam"
    assert rows[1]["optimizer.lr"] == "0.05" and rows[1]["test/accuracy"] == pytest.approx(0.90)
    assert rows[-1]["test/accuracy"] is None and rows[-1]["val/f1_macro"] == pytest.approx(0.5)


def test_filter_by_model_family_sort_and_top(store: str) -> None:
    assert [r["run_name"] for r in best_runs(store, model="fasttext")] == ["ft-fast", "ft-slow", "ft-unevaluated"]
    assert [r["run_name"] for r in best_runs(store, model="LSTM")] == ["lstm"]
    assert [r["run_name"] for r in best_runs(store, model="fasttext", top=1)] == ["ft-fast"]
    by_loss = best_runs(store, sort="test/loss", ascending=True, top=2)
    assert [r["run_name"] for r in by_loss] == ["lstm", "ft-fast"]
    assert by_loss[0]["test/loss"] == pytest.approx(0.05)  # the sort metric gets a column too


def test_bad_requests_are_one_line(store: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    with pytest.raises(TextclfError, match="no experiment 'other'"):
        best_runs(store, experiment="other")
    missing = tmp_path_factory.mktemp("empty") / "mlflow.db"
    with pytest.raises(TextclfError, match="no MLflow store at"):
        best_runs(f"sqlite:///{missing}")
    assert not missing.exists()  # a mistyped store is not created
    with pytest.raises(TextclfError, match="may not contain"):
        best_runs(store, model="x' OR '1")
    with pytest.raises(TextclfError, match="at least 1"):
        best_runs(store, top=0)


def test_the_cli_prints_a_table(store: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich fits the table to the terminal width
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    main(["--model", "fasttext", "--top", "2"])
    out = capsys.readouterr().out
    assert "2 fasttext runs of 'textclf', highest test/accuracy first" in out
    assert out.index("ft-fast") < out.index("ft-slow") and "lstm" not in out and "ft-unevaluated" not in out
    assert "0.9000" in out and "test/f1_macro" in out and "optimizer.lr" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["--experiment", "missing"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: [compare] no experiment 'missing'")


def test_params_that_differ_among_the_listed_runs_get_columns_and_equal_ones_do_not(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three seeds of one config, and an LSTM beside them: seed and model.dropout differ (both
    logged by all), model.hidden_dim is the LSTM's alone, paths.* and the equal params do not count."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("textclf", artifact_location=(tmp_path / "artifacts").as_uri())
    base = {
        "optimizer._target_": "torch.optim.Adam",
        "optimizer.lr": "0.01",
        "encoder.min_freq": "2",
        "model._target_": "textclf.models.fasttext.FastText",
        "model.dropout": "0.0",
    }
    runs = [
        ("seed0", {"seed": "0"}, 0.80),
        ("seed1", {"seed": "1"}, 0.82),
        ("seed2", {"seed": "2"}, 0.81),
        (
            "lstm",
            {
                "seed": "0",
                "model._target_": "textclf.models.lstm.LSTMClassifier",
                "model.dropout": "0.1",
                "model.hidden_dim": "64",
            },
            0.70,
        ),
    ]
    for name, params, accuracy in runs:
        run = client.create_run(experiment, run_name=name)
        logged = {**base, **params, "paths.models": str(tmp_path / name)}
        client.log_batch(
            run.info.run_id,
            metrics=[Metric("test/accuracy", accuracy, 0, 0)],
            params=[Param(key, value) for key, value in logged.items()],
        )
        client.set_terminated(run.info.run_id)

    rows = best_runs(uri)
    extra = [key for key in rows[0] if key not in ("run_id", "run_name", "model", *KEY_PARAMS, *METRICS)]
    assert extra == ["model.dropout", "seed"]
    assert [(row["run_name"], row["seed"], row["model.dropout"]) for row in rows] == [
        ("seed1", "1", "0.0"),
        ("seed2", "2", "0.0"),
        ("seed0", "0", "0.0"),
        ("lstm", "0", "0.1"),
    ]
    three_seeds = best_runs(uri, top=3)
    assert [key for key in three_seeds[0] if key not in ("run_id", "run_name", "model", *KEY_PARAMS, *METRICS)] == [
        "seed"
    ]

    monkeypatch.setenv("COLUMNS", "250")
    main(["--tracking-uri", uri, "--top", "3"])
    header = capsys.readouterr().out
    assert "seed" in header and "model.dropout" not in header and "encoder.min_freq" not in header
