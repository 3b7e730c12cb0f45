"""The notebooks run headless against the tiny corpus, and are committed without outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
from tiny_run import LABELS, tiny_run

from textclf.stages.download import download
from textclf.stages.preprocess import preprocess
from textclf.tracking import mlflow_tracking_uri

from conftest import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"


def execute(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Runs the code cells of notebook ``name`` in one namespace, as a kernel would, with
    ``parameters`` set right after the cell tagged "parameters" (papermill's convention)."""
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")
    notebook = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    namespace: dict[str, Any] = {}
    tagged = False
    try:
        for cell in notebook["cells"]:
            if cell["cell_type"] != "code":
                continue
            exec(compile("".join(cell["source"]), f"{name}:{cell['id']}", "exec"), namespace)  # noqa: S102 - our notebook
            if "parameters" in cell["metadata"].get("tags", []):
                namespace.update(parameters)
                tagged = True
    finally:
        plt.close("all")
    assert tagged, f"{name} has no cell tagged 'parameters'"
    return namespace


def test_the_exploration_notebook_describes_the_processed_corpus(tiny_config) -> None:
    cfg = tiny_config()
    download(cfg, cfg.paths.raw, progress=False)
    manifest = preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
    namespace = execute("01-explore-data.ipynb", {"processed": cfg.paths.processed})
    balance = namespace["balance"]
    assert balance.index.tolist() == LABELS
    assert balance.sum().to_dict() == manifest["counts"]  # every document counted once
    assert (balance["test"] == 6).all()  # the tiny archive has 6 test messages per group
    assert namespace["vocab_size"] == manifest["vocab_size"]
    assert namespace["length_summary"].loc["count"].to_dict() == manifest["counts"]
    assert namespace["unknown_share"]["train"] == 0.0  # min_freq=1: every training word is known


def test_the_comparison_notebook_ranks_runs_and_shows_the_best_confusion(tmp_path: Path, tiny_archive) -> None:
    run = tiny_run(tmp_path, *tiny_archive)
    with mlflow_tracking_uri(run.uri):  # the notebook sets MLflow's global URI; put it back after
        namespace = execute("02-compare-runs.ipynb", {"tracking_uri": run.uri})
    table = namespace["table"]
    assert table["run"].tolist() == [run.run_id]
    assert table["model"].tolist() == ["FastText"]
    assert 0.0 <= table["test accuracy"].iloc[0] <= 1.0
    assert namespace["best_run_id"] == run.run_id
    confusion = namespace["confusion"]
    assert confusion.ndim == 3 and confusion.shape[0] > 100  # the logged PNG, decoded


def test_committed_notebooks_carry_no_outputs() -> None:
    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert {path.name for path in notebooks} >= {"01-explore-data.ipynb", "02-compare-runs.ipynb"}
    for path in notebooks:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        assert notebook["nbformat"] == 4
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [], f"{path.name}:{cell.get('id')} has outputs (clear them)"
                assert cell["execution_count"] is None, f"{path.name}:{cell.get('id')} has an execution count"
