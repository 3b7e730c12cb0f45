"""`dvc exp run` on the user's own corpus: by configuration alone, and rerunning only on a change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_dvc_pipeline import copy_repository, run, stages_run

from conftest import TINY_MODELS, subprocess_env
from corpora import texts, write_folder, write_table

pytestmark = pytest.mark.slow

SHRINK = [
    *TINY_MODELS["fasttext"],
    "encoder.min_freq=1",
    "optimizer.lr=0.05",
    "trainer.max_epochs=4",
    "trainer.enable_progress_bar=false",
    "train.batch_size=8",
    "train.resume_interval_s=null",
]


def set_params(*overrides: str) -> list[str]:
    return [item for override in [*overrides, *SHRINK] for item in ("-S", override)]


def test_a_folder_corpus_runs_by_config_and_an_edited_file_reruns_preprocess(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "repo")
    corpus = write_folder(tmp_path / "corpus", texts(per_class=16))
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    first = run(["dvc", "exp", "run", *set_params("data=folder", f"data.path={corpus}")], repo, env)
    assert stages_run(first) == ["download", "preprocess", "train", "evaluate"]
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.5  # three classes with words of their own
    manifest = json.loads((repo / "data" / "processed" / "manifest.json").read_text())
    assert manifest["splits"]["test"].startswith("held out")

    assert stages_run(run(["dvc", "repro"], repo, env)) == []  # nothing changed: nothing runs

    (corpus / "rec.boats" / "0003.txt").write_text("hull keel mast sail harbor", encoding="utf-8")
    again = run(["dvc", "repro"], repo, env)
    assert stages_run(again)[:2] == ["download", "preprocess"]


def test_an_edited_table_row_reruns_the_data_stages_and_nothing_else_when_unchanged(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "repo")
    table = write_table(tmp_path / "reviews.csv", texts(per_class=12), text_column="review", label_column="stars")
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    overrides = ["data=table", f"data.train={table}", "data.text_column=review", "data.label_column=stars"]
    run(["python", "-m", "textclf.params", "params.yaml", *overrides, *SHRINK], repo, env)
    assert stages_run(run(["dvc", "repro", "preprocess"], repo, env)) == ["download", "preprocess"]
    assert stages_run(run(["dvc", "repro", "preprocess"], repo, env)) == []
    lines = table.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].replace("hull", "keel", 1) if "hull" in lines[3] else lines[3] + " extra"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert stages_run(run(["dvc", "repro", "preprocess"], repo, env)) == ["download", "preprocess"]
