"""Issue 20's benchmark command runs end to end on the tiny archive: every row is trained and
evaluated once (with the calibration figures), the ensemble combines two rows' logged models,
the reference runs on the same split, and it writes only where it is told."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.accuracy import ROOT, main


@pytest.mark.slow
def test_the_accuracy_benchmark_trains_each_row_once_and_ensembles_two(
    tmp_path: Path, tiny_archive: tuple[Path, str], mlflow_uri: str
) -> None:
    archive, sha256 = tiny_archive
    readme = (ROOT / "README.md").read_bytes()
    results_dir = tmp_path / "results"
    main(
        [
            *(
                "--archive",
                str(archive),
                "--sha256",
                sha256,
                "--rows",
                "default,linear",
                "--ensemble",
                "default,linear",
            ),
            *("--overrides", "trainer.max_epochs=2,data.val_fraction=0.25"),
            *("--work", str(tmp_path / "work"), "--results", str(results_dir), "--no-readme"),
        ]
    )

    results = json.loads((results_dir / "accuracy.json").read_text(encoding="utf-8"))
    assert list(results["rows"]) == ["default", "linear"]
    for figures in results["rows"].values():
        assert 0.0 <= figures["test_accuracy"] <= 1.0 and 0.0 <= figures["test_f1_macro"] <= 1.0
        assert figures["train_seconds"] > 0 and figures["peak_rss_mb"] > 0 and figures["epochs"] == 2
        assert 0.0 <= figures["ece_calibrated"] <= 1.0 and figures["temperature"] > 0
    ensemble = results["ensemble"]
    assert [member["row"] for member in ensemble["members"]] == ["default", "linear"]
    assert sum(member["weight"] for member in ensemble["members"]) == pytest.approx(1.0)
    assert ensemble["num_test"] == results["counts"]["test"]
    assert 0.0 <= results["reference"]["accuracy"] <= 1.0
    table = (results_dir / "accuracy.md").read_text(encoding="utf-8")
    assert (
        "| `default` test accuracy | ≥ 87.0% |" in table
        and "| `lstm` test accuracy | ≥ 84.0% | not measured |" in table
    )
    assert "| `best` test accuracy | ≥ 88.5% | not measured |" in table
    assert (ROOT / "README.md").read_bytes() == readme  # --no-readme
