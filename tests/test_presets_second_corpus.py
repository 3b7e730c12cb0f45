"""The presets are not tuned to 20 Newsgroups alone: each one, as composed (its own sizes, epochs
and step size, only the paths and the store changed), learns a second corpus that is nothing like
it (short support tickets, a table with its own classes), and its calibrated probabilities are
probabilities."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from textclf.config import validate
from textclf.params import compose
from textclf.stages.download import download
from textclf.stages.evaluate import evaluate
from textclf.stages.preprocess import preprocess
from textclf.stages.train import train

from conftest import REPO_ROOT
from corpora import write_table

# Short texts of three classes sharing most of their words, unlike long Usenet messages.
TICKET_WORDS = {
    "billing": "invoice refund charged payment card receipt price subscription".split(),
    "delivery": "parcel courier shipped tracking arrived late address package".split(),
    "login": "password reset locked account username sign code email".split(),
}
SHARED_WORDS = "please help my the order is not working today since yesterday hello thanks".split()
# conf/experiment/best.yaml is an ensemble of members (conf/member/), each a preset of its own:
# linear and fasttext_wide are here; the pretrained member needs a pretrained model (the tests'
# are random: tests/test_hf_training.py checks that one learns) and test_ensemble_preset.py
# runs the whole sweep.
PRESETS = ["", "+experiment=fasttext_wide", "+experiment=linear", "+experiment=lstm", "+experiment=transformer"]


def tickets(per_class: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for label, own in TICKET_WORDS.items():
        for _ in range(per_class):
            words = [rng.choice(own if rng.random() < 0.35 else SHARED_WORDS) for _ in range(rng.randint(6, 14))]
            pairs.append((label, " ".join(words)))
    rng.shuffle(pairs)
    return pairs


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS, ids=["default", "fasttext_wide", "linear", "lstm", "transformer"])
def test_each_preset_learns_a_second_corpus(tmp_path: Path, preset: str, mlflow_uri: str) -> None:
    table = write_table(tmp_path / "tickets.csv", tickets(per_class=40, seed=1))
    paths = [f"paths.{name}={tmp_path / name}" for name in ("raw", "processed", "models", "reports", "cache")]
    overrides = [*filter(None, [preset]), "data=table", f"data.train={table}", *paths, f"tracking.uri={mlflow_uri}"]
    cfg = validate(compose([*overrides, "trainer.enable_progress_bar=false"], root=REPO_ROOT))
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed, parallel=False)
    train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    metrics = evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)

    majority = 1 / len(TICKET_WORDS)  # the classes are balanced
    assert metrics["accuracy"] >= majority + 0.4, metrics
    assert metrics["temperature"] > 0 and 0.0 <= metrics["ece_calibrated"] <= 1.0
    assert json.loads((cfg.paths.reports / "metrics.json").read_text(encoding="utf-8")) == metrics
