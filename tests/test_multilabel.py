"""Multi-label classification: texts that carry several labels at once (README: Your own data).

The corpus is built here: each document joins texts of one to three of six made-up classes
(tests/corpora.py) and is labelled with all of them; a few carry no label. It is written as
JSON Lines (a list column) and as a CSV whose label cells are joined with ``,``
(data.label_separator). Two trained and evaluated runs are shared by the module (fasttext on
the JSON Lines, linear on the CSV); the other families train once each.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from textclf.calibration import calibrated, fit_temperature
from textclf.config import Config, load_params, validate
from textclf.data.encoded import EncodedSplit, read_labels
from textclf.data.labels import iterative_holdout
from textclf.errors import TextclfError
from textclf.params import compose, write_params
from textclf.stages.download import download
from textclf.stages.evaluate import evaluate, predict
from textclf.stages.preprocess import preprocess
from textclf.stages.train import train
from textclf.thresholds import tune_thresholds

from conftest import GROUP_WORDS, REPO_ROOT, TINY_MODELS, assert_same_weights, subprocess_env
from corpora import texts

CLASSES = {
    **GROUP_WORDS,
    "news.cars": "engine wheel brake clutch gear piston tyre diesel sedan garage".split(),
    "comp.chess": "pawn rook bishop knight castle gambit checkmate opening endgame queen".split(),
    "misc.garden": "tulip compost hedge spade seedling mulch rose weed pond lawn".split(),
}
LABELS = sorted(CLASSES)
UNLABELLED = 4  # documents with no label (common words only)
WORDS = 12  # of a class's text in a document: three classes' fit the sequence models' 40 tokens
TINY = {
    **TINY_MODELS,
    "lstm": [*TINY_MODELS["lstm"], "model.max_len=40"],
    "transformer": [*TINY_MODELS["transformer"], "model.max_len=40"],
    "hf": ["model.max_len=48", "scheduler=none"],  # model.name: the test's tiny BERT
}


def documents(count: int = 180, seed: int = 0) -> list[dict]:
    """``count`` documents joining texts (WORDS words) of 1-3 classes, labelled with them (sorted), then
    UNLABELLED documents without a label."""
    rng = random.Random(seed)
    pool: dict[str, list[str]] = {}
    for label, text in texts(per_class=60, seed=seed, classes=CLASSES):
        pool.setdefault(label, []).append(text)
    rows = []
    for _ in range(count):
        chosen = sorted(rng.sample(LABELS, rng.choice([1, 2, 2, 3])))
        parts = [" ".join(rng.choice(pool[label]).split()[:WORDS]) for label in chosen]
        rows.append({"text": " ".join(parts), "tags": chosen})
    common = "the and this that with from have about would there think people".split()
    rows += [{"text": " ".join(rng.choice(common) for _ in range(20)), "tags": []} for _ in range(UNLABELLED)]
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict], separator: str = ",") -> Path:
    pd.DataFrame({"text": [r["text"] for r in rows], "tags": [separator.join(r["tags"]) for r in rows]}).to_csv(
        path, index=False
    )
    return path


def ml_overrides(root: Path, table: Path, *overrides: str, model: str = "fasttext") -> list[str]:
    """The real config, shrunk: a tiny model trained on ``table`` under ``root``."""
    paths = [f"paths.{name}={root / name}" for name in ("raw", "processed", "models", "reports", "cache")]
    return [
        "data=table",
        f"data.train={table}",
        "data.label_column=tags",
        *(['data.label_separator=","'] if table.suffix == ".csv" else []),
        *(["encoder.min_freq=1"] if model != "hf" else []),  # a pretrained tokenizer has its vocabulary
        f"model={model}",
        *TINY[model],
        "optimizer.lr=0.05",
        "trainer.max_epochs=6",
        "trainer.enable_progress_bar=false",
        "train.batch_size=8",
        "train.eval_batch_size=64",
        "train.resume_interval_s=null",
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        *paths,
        *overrides,
    ]


def ml_config(root: Path, table: Path, *overrides: str, model: str = "fasttext") -> Config:
    return validate(compose(ml_overrides(root, table, *overrides, model=model), root=REPO_ROOT))


def prepare(cfg: Config) -> dict:
    download(cfg, cfg.paths.raw, progress=False)
    return preprocess(cfg, cfg.paths.raw, cfg.paths.processed, parallel=False)


def trained(cfg: Config, evaluated: bool = True) -> tuple[str, dict | None]:
    """(run id, test metrics or None) of a training on ``cfg`` (prepared here)."""
    prepare(cfg)
    summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    metrics = evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports) if evaluated else None
    return summary.run_id, metrics


def constant_baseline(labels: torch.Tensor) -> float:
    """The best micro-F1 of a constant prediction: the k most frequent labels for every text."""
    order = labels.sum(dim=0).argsort(descending=True)
    best = 0.0
    for k in range(1, labels.shape[1] + 1):
        predicted = torch.zeros_like(labels)
        predicted[:, order[:k]] = 1
        true_positives = float((predicted & labels).sum())
        best = max(best, 2 * true_positives / (float(predicted.sum()) + float(labels.sum())))
    return best


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multilabel-corpus")
    rows = documents()
    return {"jsonl": write_jsonl(root / "tags.jsonl", rows), "csv": write_csv(root / "tags.csv", rows)}


@pytest.fixture(scope="module")
def fasttext_run(corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, str, dict]:
    """fasttext on the JSON Lines, one global threshold; trained and evaluated."""
    cfg = ml_config(tmp_path_factory.mktemp("fasttext"), corpus["jsonl"], "train.monitor=val/f1_micro")
    run_id, metrics = trained(cfg)
    return cfg, run_id, metrics


@pytest.fixture(scope="module")
def linear_run(corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, str, dict]:
    """linear on the CSV (labels joined with ","), a threshold per label, balanced class weights."""
    root = tmp_path_factory.mktemp("linear")
    cfg = ml_config(root, corpus["csv"], "train.threshold=per_label", "train.class_weights=balanced", model="linear")
    run_id, metrics = trained(cfg)
    return cfg, run_id, metrics


# --- data -----------------------------------------------------------------------------------


def test_a_label_list_column_is_stored_multi_hot_and_every_label_is_in_every_split(corpus, tmp_path: Path) -> None:
    cfg = ml_config(tmp_path, corpus["jsonl"])
    manifest = prepare(cfg)
    assert manifest["multi_label"] is True and manifest["unlabelled_documents"] == UNLABELLED
    assert read_labels(cfg.paths.processed) == LABELS
    splits = {name: EncodedSplit.load(cfg.paths.processed / f"{name}.pt") for name in ("train", "val", "test")}
    assert sum(len(split) for split in splits.values()) == 180 + UNLABELLED
    for split in splits.values():
        assert split.labels.dtype == torch.uint8 and split.labels.shape[1] == len(LABELS)
        assert bool((split.labels.sum(dim=0) > 0).all())  # iterative stratification: no label left out
    counts = {name: len(split) for name, split in splits.items()}
    assert counts == manifest["counts"] and counts["test"] == pytest.approx(0.2 * (180 + UNLABELLED), abs=2)


def test_a_csv_with_a_label_separator_gives_the_same_processed_data_as_the_json_lines(corpus, tmp_path: Path) -> None:
    jsonl = ml_config(tmp_path / "jsonl", corpus["jsonl"])
    csv = ml_config(tmp_path / "csv", corpus["csv"])
    prepare(jsonl)
    prepare(csv)
    for name in ("train.pt", "val.pt", "test.pt", "labels.json", "vocab.txt"):
        assert (csv.paths.processed / name).read_bytes() == (jsonl.paths.processed / name).read_bytes(), name


def test_iterative_stratification_keeps_each_labels_share_and_a_single_document_label_in_training() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(400, 5, generator=generator) < torch.tensor([0.5, 0.3, 0.1, 0.05, 0.0])).numpy()
    labels[7, 4] = True  # a label of one document
    kept, held = iterative_holdout(labels, 0.25, seed=3)
    assert sorted([*kept, *held]) == list(range(400)) and abs(held.size - 100) <= 2
    for label in range(4):
        share = labels[held, label].sum() / labels[:, label].sum()
        assert share == pytest.approx(0.25, abs=0.05), label
    assert 7 in kept
    again = iterative_holdout(labels, 0.25, seed=3)
    assert (again[1] == held).all()  # seeded


def test_single_labels_are_not_multi_label_unless_forced(corpus, tmp_path: Path) -> None:
    rows = [{"text": row["text"], "tags": row["tags"][0]} for row in documents() if row["tags"]]
    table = write_jsonl(tmp_path / "one.jsonl", rows)
    assert "multi_label" not in prepare(ml_config(tmp_path / "auto", table))
    forced = ml_config(tmp_path / "forced", table, "data.multi_label=true")
    assert prepare(forced)["multi_label"] is True
    assert EncodedSplit.load(forced.paths.processed / "train.pt").labels.sum(dim=1).eq(1).all()


@pytest.mark.parametrize(
    ("rows", "overrides", "message"),
    [
        (
            [{"text": "a", "tags": ["rec.boats", ""]}],
            [],
            r"tags.jsonl row 1: an empty label name in the label list \['rec.boats', ''\] of column 'tags'",
        ),
        (
            [{"text": "a", "tags": ["rec.boats"]}, {"text": "b", "tags": "talk.bread"}],
            [],
            r"tags.jsonl row 2: the label column mixes lists and single labels \(a single label here, a list of "
            r"labels at .*tags.jsonl row 1\)",
        ),
        (
            [{"text": "a", "tags": ["rec.boats", "talk.bread"]}],
            ["data.multi_label=false"],
            r"tags.jsonl row 1: its label is a list \['rec.boats', 'talk.bread'\] .* and data.multi_label=false: "
            r"set data.multi_label=auto",
        ),
    ],
)
def test_bad_multi_label_input_is_one_line_naming_the_row(
    tmp_path: Path, rows: list[dict], overrides: list[str], message: str
) -> None:
    cfg = ml_config(tmp_path, write_jsonl(tmp_path / "tags.jsonl", rows), *overrides)
    download(cfg, cfg.paths.raw, progress=False)
    with pytest.raises(TextclfError, match=message) as error:
        preprocess(cfg, cfg.paths.raw, cfg.paths.processed, parallel=False)
    assert "\n" not in str(error.value)
    assert not cfg.paths.processed.exists()


def test_a_csv_label_cell_with_an_empty_name_between_separators_is_one_line(tmp_path: Path) -> None:
    table = tmp_path / "tags.csv"
    table.write_text('text,tags\nsome words,"rec.boats,,talk.bread"\n', encoding="utf-8")
    cfg = ml_config(tmp_path, table)
    download(cfg, cfg.paths.raw, progress=False)
    with pytest.raises(TextclfError, match=r"tags.csv row 1: an empty label name in the label list"):
        preprocess(cfg, cfg.paths.raw, cfg.paths.processed, parallel=False)


# --- training and evaluation ----------------------------------------------------------------


def test_fasttext_and_linear_learn_the_label_sets_well_above_a_constant_prediction(fasttext_run, linear_run) -> None:
    test = EncodedSplit.load(fasttext_run[0].paths.processed / "test.pt").labels
    baseline = constant_baseline(test)
    assert baseline < 0.6
    for _, _, metrics in (fasttext_run, linear_run):
        assert metrics["f1_micro"] >= max(0.85, baseline + 0.3), metrics
        assert metrics["hamming_loss"] < 0.1
        assert metrics["label_cardinality"] == pytest.approx(float(test.sum(dim=1, dtype=torch.float64).mean()), 1e-5)
        assert abs(metrics["label_cardinality_predicted"] - metrics["label_cardinality"]) < 0.3


@pytest.mark.parametrize(("model", "epochs"), [("lstm", 8), ("transformer", 12)])
def test_the_sequence_models_learn_the_label_sets(corpus, tmp_path: Path, model: str, epochs: int) -> None:
    cfg = ml_config(
        tmp_path, corpus["jsonl"], "train.monitor=val/f1_micro", f"trainer.max_epochs={epochs}", model=model
    )
    prepare(cfg)
    summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    val = EncodedSplit.load(cfg.paths.processed / "val.pt").labels
    assert summary.best_score >= constant_baseline(val) + 0.2


def test_evaluate_reports_the_multi_label_scores_per_label_and_mlflow_has_them(fasttext_run) -> None:
    from mlflow import MlflowClient

    cfg, run_id, metrics = fasttext_run
    reports = cfg.paths.reports
    summary = json.loads((reports / "metrics.json").read_text())
    assert summary["multi_label"] is True and summary["threshold_tuning"] == "global"
    for key in (
        "accuracy",
        "f1_micro",
        "f1_macro",
        "precision_micro",
        "recall_macro",
        "hamming_loss",
        "ece_calibrated",
    ):
        assert 0 <= summary[key] <= 1
    per_class = json.loads((reports / "per_class.json").read_text())
    assert list(per_class) == LABELS
    test = EncodedSplit.load(cfg.paths.processed / "test.pt").labels
    assert [row["support"] for row in per_class.values()] == test.sum(dim=0).tolist()
    assert (reports / "per_class_f1.csv").read_text().splitlines()[0] == "class,f1"
    rows = (reports / "confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) > 1 + test.sum() // 2
    for name in ("reliability_uncalibrated.csv", "reliability_calibrated.csv", "confusion.png", "reliability.png"):
        assert (reports / name).stat().st_size > 0
    run = MlflowClient(cfg.tracking.uri).get_run(run_id)
    assert run.data.metrics["test/f1_micro"] == metrics["f1_micro"]
    assert run.data.metrics["test/hamming_loss"] == metrics["hamming_loss"]
    assert run.data.metrics["val/threshold"] == metrics["threshold"]
    assert "val/f1_micro" in run.data.metrics  # the monitored metric, logged while training


def test_the_thresholds_are_tuned_on_the_validation_split_and_shipped(fasttext_run, linear_run, tmp_path) -> None:
    import mlflow

    from textclf.models.checkpoint import load_checkpoint
    from textclf.stages.train import build_datamodule
    from textclf.tracking import mlflow_tracking_uri

    for cfg, run_id, metrics in (fasttext_run, linear_run):
        module = load_checkpoint(cfg.paths.models / "model.ckpt")
        datamodule = build_datamodule(cfg, cfg.paths.processed)
        logits, labels = predict(module, datamodule, split="val")
        temperature = round(fit_temperature(logits, labels), 6)
        assert temperature == metrics["temperature"]
        expected = tune_thresholds(calibrated(logits, temperature, multi_label=True), labels, cfg.train.threshold)
        per_class = json.loads((cfg.paths.reports / "per_class.json").read_text())
        assert [row["threshold"] for row in per_class.values()] == expected
        with mlflow_tracking_uri(cfg.tracking.uri):
            local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / run_id))
        shipped = json.loads((Path(local) / "artifacts" / "thresholds.json").read_text())["thresholds"]
        assert shipped == dict(zip(LABELS, expected))
    assert len(set(expected)) > 1 or cfg.train.threshold == "global"


def test_threshold_tuning_picks_the_best_f1_cut_globally_and_per_label() -> None:
    # Label 0 is there at 0.32 and above (0.2 is not), label 1 above 0.6 (0.6 is not).
    probabilities = torch.tensor([[0.35, 0.85], [0.32, 0.6], [0.1, 0.9], [0.2, 0.2]])
    labels = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=torch.uint8)
    assert tune_thresholds(probabilities, labels, "per_label") == [0.32, 0.61]  # the best cuts nearest 0.5
    (overall, again) = tune_thresholds(probabilities, labels, "global")
    assert overall == again == 0.32  # 4 of 4 found, one (0.6) given wrongly: micro-F1 8/9, the best
    decided = probabilities >= overall
    assert (2 * (decided & labels.bool()).sum() / (decided.sum() + labels.sum())).item() == pytest.approx(8 / 9)
    # A label with no validation document keeps the global threshold.
    assert (
        tune_thresholds(probabilities, torch.tensor([[1, 0]] * 2 + [[0, 0]] * 2), "per_label")[1]
        == (tune_thresholds(probabilities, torch.tensor([[1, 0]] * 2 + [[0, 0]] * 2), "global")[1])
    )


# --- the shipped model, predict, compare, ensemble ------------------------------------------


def test_the_shipped_model_and_predict_return_label_sets_and_every_probability(fasttext_run, capsys) -> None:
    from textclf import predict as predict_module

    cfg, run_id, _ = fasttext_run
    two = " ".join(CLASSES["rec.boats"][:6] + CLASSES["comp.chess"][:6])
    one = " ".join(CLASSES["talk.bread"][:8])
    frame = predict_module.predict(f"runs:/{run_id}/model", [two, one], cfg.tracking.uri)
    assert list(frame.columns) == ["labels", *LABELS]
    assert frame["labels"].tolist() == [["comp.chess", "rec.boats"], ["talk.bread"]]
    assert frame[LABELS].to_numpy().min() >= 0 and frame[LABELS].to_numpy().max() <= 1
    predict_module.main(["--run-id", run_id, "--tracking-uri", cfg.tracking.uri, "--json", two])
    (row,) = json.loads(capsys.readouterr().out)
    assert row["labels"] == ["comp.chess", "rec.boats"] and set(row["probabilities"]) == set(LABELS)
    predict_module.main(["--run-id", run_id, "--tracking-uri", cfg.tracking.uri, two])
    assert re.match(r"comp\.chess [01]\.\d{3}, rec\.boats [01]\.\d{3}  sail hull", capsys.readouterr().out)


def test_compare_lists_multi_label_runs_with_their_micro_f1(fasttext_run, linear_run) -> None:
    from textclf.compare import best_runs

    for cfg, run_id, metrics in (fasttext_run, linear_run):
        (row,) = best_runs(cfg.tracking.uri)
        assert row["run_id"] == run_id and row["test/f1_micro"] == metrics["f1_micro"]
        assert row["test/accuracy"] == metrics["accuracy"]  # the subset accuracy


def test_an_ensemble_of_multi_label_models_is_refused_in_one_line(fasttext_run, tmp_path: Path) -> None:
    from textclf.ensemble import ensemble

    cfg, run_id, _ = fasttext_run
    with pytest.raises(TextclfError, match=r"a multi-label model .*an ensemble combines single-label models only"):
        ensemble([f"runs:/{run_id}/model"] * 2, cfg.tracking.uri, tmp_path / "ensemble.json")


@pytest.mark.slow
def test_the_served_model_answers_label_sets_as_json(fasttext_run, tmp_path: Path) -> None:
    import urllib.request

    from test_serving import served_model

    cfg, run_id, _ = fasttext_run
    two = " ".join(CLASSES["rec.boats"][:6] + CLASSES["comp.chess"][:6])
    with served_model(f"runs:/{run_id}/model", cfg.tracking.uri, tmp_path) as url:
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps({"dataframe_records": [{"text": two}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            (prediction,) = json.loads(response.read())["predictions"]
    assert prediction["labels"] == ["comp.chess", "rec.boats"]
    assert set(prediction) == {"labels", *LABELS}


@pytest.mark.slow
def test_a_multi_label_hugging_face_model_trains_with_one_sigmoid_per_label(corpus, tmp_path: Path) -> None:
    from hf_models import build_tiny_bert

    bert = build_tiny_bert(tmp_path / "bert")
    cfg = ml_config(
        tmp_path,
        corpus["jsonl"],
        f"model.name={bert}",
        "optimizer.lr=0.003",
        "trainer.max_epochs=12",
        "train.monitor=val/f1_micro",
        model="hf",
    )
    prepare(cfg)
    summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    val = EncodedSplit.load(cfg.paths.processed / "val.pt").labels
    assert summary.best_score >= constant_baseline(val) + 0.1


# --- resume ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_multi_label_training_resumes_to_the_uninterrupted_weights(corpus, tmp_path: Path) -> None:
    from test_guarantees_resume import completed, kill_after_first_epoch, stage_command

    overrides = ["trainer.max_epochs=12", "train.num_threads=1", "train.resume_interval_s=0"]
    reference = ml_config(tmp_path / "uninterrupted", corpus["jsonl"], *overrides)
    trained(reference, evaluated=False)

    root = tmp_path / "killed"
    root.mkdir()
    params = root / "params.yaml"
    write_params(params, ml_overrides(root, corpus["jsonl"], *overrides), root=REPO_ROOT)
    cfg = load_params(params)
    prepare(cfg)
    env = subprocess_env(MLFLOW_TRACKING_URI=cfg.tracking.uri)
    kill_after_first_epoch(stage_command("train", params), root, env, cfg.paths.cache / "resume")
    assert "train: resuming from" in completed(stage_command("train", params), root, env)
    assert_same_weights(cfg.paths.models / "model.ckpt", reference.paths.models / "model.ckpt")
    assert (cfg.paths.reports / "training_curves.csv").read_text() == (
        reference.paths.reports / "training_curves.csv"
    ).read_text()
