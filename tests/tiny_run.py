"""One tiny training (and optionally its evaluation) in a store of its own, for the tests of
what comes after training: the shipped model, predict, compare, notebooks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textclf.config import Config, validate
from textclf.params import compose
from textclf.stages.download import download
from textclf.stages.evaluate import evaluate
from textclf.stages.preprocess import preprocess
from textclf.stages.train import train

from conftest import GROUP_WORDS, REPO_ROOT, shrink_overrides

LABELS = sorted(GROUP_WORDS)
# One text per group, made of its own words: a model trained on the tiny corpus gets these right.
TEXTS = {group: " ".join(words[:6]) for group, words in GROUP_WORDS.items()}


@dataclass(frozen=True)
class TinyRun:
    cfg: Config
    uri: str  # the run's MLflow store (sqlite, inside the run's directory)
    run_id: str


def tiny_run(
    root: Path,
    archive: Path,
    sha256: str,
    *overrides: str,
    evaluated: bool = True,
    uri: str | None = None,
    model: str = "fasttext",
) -> TinyRun:
    """Downloads, preprocesses and trains (3 epochs) ``model`` (shrunk: conftest.TINY_MODELS)
    under ``root``, then evaluates, which logs the shipped model (runs:/<id>/model), unless
    ``evaluated`` is False. The run goes to the store ``uri`` (default: one of its own, <root>/mlflow.db)."""
    uri = uri if uri is not None else f"sqlite:///{root / 'mlflow.db'}"
    paths = [f"paths.{name}={root / name}" for name in ("raw", "processed", "models", "reports", "cache")]
    cfg = validate(
        compose(
            [
                *shrink_overrides(archive, sha256, model),
                *paths,
                "trainer.max_epochs=3",
                f"tracking.uri={uri}",
                *overrides,
            ],
            root=REPO_ROOT,
        )
    )
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
    summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    if evaluated:
        evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    return TinyRun(cfg, uri, summary.run_id)
