"""The benchmark's one command runs end to end (on the tiny archive, so in seconds): every
measurement it reports is made, and it writes only where it is told."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.run import RESULTS, ROOT, TARGETS, main

THRESHOLDS = {"80%", "84%", "86%", "88%"}


@pytest.mark.slow
def test_the_benchmark_measures_everything_it_reports(
    tmp_path: Path, tiny_archive: tuple[Path, str], mlflow_uri: str
) -> None:
    archive, sha256 = tiny_archive
    readme, shipped = (ROOT / "README.md").read_bytes(), (RESULTS / "latest.json").read_bytes()
    results_dir = tmp_path / "results"
    main(
        [
            "--archive",
            str(archive),
            "--sha256",
            sha256,
            "--models",
            "fasttext",
            "--repeats",
            "1",
            "--skip-dvc",
            "--work",
            str(tmp_path / "work"),
            "--results",
            str(results_dir),
            "--no-readme",
        ]
    )

    results = json.loads((results_dir / "latest.json").read_text(encoding="utf-8"))
    assert results["counts"]["test"] == 18 and results["counts"]["train"] + results["counts"]["val"] == 48
    fasttext = results["models"]["fasttext"]
    epochs = fasttext["epochs"]
    assert epochs == 6  # the shipped default, trained as users train it
    assert len(fasttext["test_curve"]) == epochs and set(fasttext["time_to"]) == THRESHOLDS
    assert 0.0 <= fasttext["test_accuracy"] <= 1.0 and 0.0 <= fasttext["test_f1_macro"] <= 1.0
    assert fasttext["train_seconds"] > 0 and fasttext["samples_per_second"] > 0 and fasttext["peak_rss_mb"] > 0
    overhead = results["overhead"]
    assert len(overhead["pipeline_runs"]) == len(overhead["bare_runs"]) == 1 and overhead["epochs"] == epochs
    assert overhead["ratio"] == pytest.approx(overhead["pipeline_runs"][0] / overhead["bare_runs"][0])
    baselines = results["baselines"]
    assert 0.0 <= baselines["tfidf_svm_accuracy"] <= 1.0 and baselines["countvectorizer_seconds"] > 0
    assert results["preprocess"]["ratio"] > 0 and "dvc" not in results  # --skip-dvc

    table = (results_dir / "latest.md").read_text(encoding="utf-8")
    assert "| fasttext |" in table and "| lstm |" not in table  # only the presets asked for
    assert all(f"| {target.name} |" in table for target in TARGETS)
    assert (ROOT / "README.md").read_bytes() == readme  # --no-readme
    assert (RESULTS / "latest.json").read_bytes() == shipped  # --results
