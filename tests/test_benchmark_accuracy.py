"""Issue 20's benchmark command runs end to end on the tiny archive: every row is trained and
evaluated once (with the calibration figures), the ensemble combines two rows' logged models,
the reference runs on the same split, and it writes only where it is told."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hf_models import build_tiny_bert

from benchmarks.accuracy import ROOT, main, preset_members, render_markdown


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


def test_the_best_row_shows_its_members_and_is_judged_by_its_whole_command() -> None:
    """The ensemble preset's row (preset_row): its members' weights and test accuracies alone on
    a line under the table; its train time, the whole command's, against the 1800 s target."""
    members = [
        {"member": name, "run_id": name, "weight": weight, "test": {"accuracy": accuracy}}
        for name, weight, accuracy in (
            ("linear", 0.4, 0.8683),
            ("fasttext_wide", 0.22, 0.8675),
            ("minilm", 0.38, 0.7783),
        )
    ]
    best = {"test_accuracy": 0.8983, "test_f1_macro": 0.8916, "train_seconds": 1596.2, "samples_per_second": None}
    best |= {"peak_rss_mb": None, "ece_uncalibrated": None, "ece_calibrated": 0.0253, "temperature": None}
    results = {"date": "d", "machine": "m", "corpus": "c", "commit": "x", "counts": {"train": 1, "val": 1, "test": 1}}
    table = render_markdown(results | {"rows": {"best": best | {"members": members}}})
    assert "| best | 89.83% | 89.16% | 1596 |" in table
    assert (
        "| best's members (weight, test acc alone): linear 0.40, 86.83%; fasttext_wide 0.22, 86.75%; "
        "minilm 0.38, 77.83% |" in table
    )
    assert "| `best` test accuracy | ≥ 88.5% | 89.83% | met |" in table
    assert "| `best` training time | ≤ 1800 s | 1596 s | met |" in table
    assert "| `best` test ECE, calibrated | ≤ 0.03 | 0.025 | met |" in table
    assert preset_members() == ["linear", "fasttext_wide", "minilm"]  # conf/experiment/best.yaml's sweep


@pytest.mark.slow
def test_the_best_row_runs_the_preset_with_every_member(
    tmp_path: Path, tiny_archive: tuple[Path, str], hf_home: Path, mlflow_uri: str
) -> None:
    """`--rows best` runs `python -m textclf +experiment=best` as a user does (its three members,
    the pretrained one from --model) and reports the ensemble, with each member by name."""
    archive, sha256 = tiny_archive
    bert = build_tiny_bert(tmp_path / "bert", max_positions=128)  # the minilm member reads 128 tokens
    results_dir = tmp_path / "results"
    overrides = "data.val_fraction=0.25,train.batch_size=8,train.eval_batch_size=16,trainer.max_epochs=1"
    main(
        [
            *("--archive", str(archive), "--sha256", sha256, "--rows", "best", "--no-reference"),
            *("--overrides", overrides, "--model", str(bert)),
            *("--work", str(tmp_path / "work"), "--results", str(results_dir), "--no-readme"),
        ]
    )
    best = json.loads((results_dir / "accuracy.json").read_text(encoding="utf-8"))["rows"]["best"]
    assert [member["member"] for member in best["members"]] == ["linear", "fasttext_wide", "minilm"]
    assert sum(member["weight"] for member in best["members"]) == pytest.approx(1.0)
    assert 0.0 <= best["test_accuracy"] <= 1.0 and 0.0 <= best["ece_calibrated"] <= 1.0
    assert best["train_seconds"] > 0
    assert "| best's members (weight, test acc alone): linear " in (results_dir / "accuracy.md").read_text("utf-8")
