"""The pretrained-encoder benchmark's one command runs end to end on the tiny archive with the
tiny BERT (in seconds): both rows and the Trainer peer are measured, and it writes only where
it is told."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hf_models import build_tiny_bert

from benchmarks.pretrained import ROOT, main


@pytest.mark.slow
def test_the_pretrained_benchmark_measures_both_rows_and_the_trainer_peer(
    tmp_path: Path, tiny_archive: tuple[Path, str], hf_home: Path, mlflow_uri: str
) -> None:
    archive, sha256 = tiny_archive
    model = build_tiny_bert(tmp_path / "tiny-bert")
    readme = (ROOT / "README.md").read_bytes()
    results_dir = tmp_path / "results"
    main(
        [
            *("--archive", str(archive), "--sha256", sha256, "--model", str(model)),
            *("--epochs", "1", "--frozen-epochs", "2", "--max-len", "frozen=32,finetune=16"),
            *("--work", str(tmp_path / "work"), "--results", str(results_dir), "--no-readme"),
        ]
    )

    results = json.loads((results_dir / "pretrained.json").read_text(encoding="utf-8"))
    assert set(results["rows"]) == {"frozen", "finetune"}
    for row, max_len, epochs in (("frozen", 32, 2), ("finetune", 16, 1)):
        figures = results["rows"][row]
        assert figures["max_len"] == max_len and figures["epochs"] == epochs
        assert 0.0 <= figures["test_accuracy"] <= 1.0 and 0.0 <= figures["test_f1_macro"] <= 1.0
        assert figures["seconds"] > 0 and figures["samples_per_second"] > 0 and figures["peak_rss_mb"] > 0
    peer = results["trainer"]
    assert peer["epochs"] == 1 and peer["steps"] > 0 and 0.0 <= peer["test_accuracy"] <= 1.0
    table = (results_dir / "pretrained.md").read_text(encoding="utf-8")
    assert "| transformers.Trainer, fine-tuned, same tokens | 16 |" in table
    assert "train wall time textclf / Trainer ≤ 1.0" in table
    assert (ROOT / "README.md").read_bytes() == readme  # --no-readme
