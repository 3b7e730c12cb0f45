"""Explanations (textclf.explain): exact for the bag and linear models, integrated gradients for the
sequence models; faithful (deleting the top tokens hurts more than deleting random ones); and
served: predict --explain, the pyfunc's params={"explain": K}, `mlflow models serve`.

One tiny training per model family, shared by the module's tests (evaluated, so shipped, for
the default fastText only)."""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from hf_models import build_tiny_bert
from tiny_run import LABELS, TEXTS, TinyRun, tiny_run

from textclf.config import validate
from textclf.data.datamodule import BatchedSplit, tokens_kept
from textclf.data.encoded import EncodedSplit
from textclf.encoders.base import TextEncoder, load_encoder
from textclf.errors import TextclfError
from textclf.explain import DEFAULT_STEPS, EXACT, INTEGRATED_GRADIENTS, Explanation, explain_batch, top_features
from textclf.models.checkpoint import load_checkpoint
from textclf.models.classifier import TextClassifier
from textclf.params import compose
from textclf.predict import main
from textclf.stages.download import download
from textclf.stages.preprocess import preprocess
from textclf.stages.train import train
from textclf.tracking import mlflow_tracking_uri

from conftest import GROUP_WORDS, REPO_ROOT

# name -> (model, overrides): the fastText model both ways of weighting its words (with hashed bigrams).
FAMILIES = {
    "fasttext-tfidf": ("fasttext", ["model.weighting=tfidf"]),
    "fasttext-mean": ("fasttext", ["model.weighting=mean"]),
    "linear": ("linear", []),
    "lstm": ("lstm", []),
    "transformer": ("transformer", []),
    "hf": ("hf", []),
}
DELETED = 5  # tokens deleted per document (faithfulness)
RANDOM_DRAWS = 10  # random deletions averaged per document


@dataclass
class Trained:
    module: TextClassifier
    encoder: TextEncoder
    test: EncodedSplit
    max_len: int | None

    @functools.cached_property
    def explanations(self) -> list[Explanation]:
        """The test split's, with the defaults: computed once, read by several tests."""
        return explain_batch(self.module, self.encoder, self.batch())

    def batch(self, indices: list[int] | None = None) -> dict[str, torch.Tensor]:
        indices = list(range(len(self.test))) if indices is None else indices
        return BatchedSplit(self.test, self.max_len)[indices]


def train_hf(root: Path, archive: Path, sha256: str) -> Path:
    """The tiny random BERT (tests/hf_models.py) fine-tuned 3 epochs on the tiny archive; -> paths.models."""
    bert = build_tiny_bert(root / "tiny-bert")
    paths = [f"paths.{name}={root / name}" for name in ("raw", "processed", "models", "reports", "cache")]
    overrides = [
        "model=hf",
        f"model.name={bert}",
        "model.max_len=64",
        f"data.url={archive}",
        f"data.sha256={sha256}",
        "data.mirrors=[]",
        "data.val_fraction=0.25",
        "scheduler=none",
        "optimizer.lr=0.003",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
        "train.batch_size=8",
        "train.eval_batch_size=16",
        "train.resume_interval_s=null",
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        *paths,
    ]
    cfg = validate(compose(overrides, root=REPO_ROOT))
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed, parallel=False)
    train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
    return cfg.paths.processed


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_archive) -> Trained:
    model, overrides = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    if model == "hf":
        request.getfixturevalue("hf_offline")
        processed = train_hf(root, *tiny_archive)
        models = processed.parent / "models"
    else:
        run = tiny_run(root, *tiny_archive, *overrides, evaluated=False, model=model)
        processed, models = run.cfg.paths.processed, run.cfg.paths.models
    module = load_checkpoint(models / "model.ckpt").eval()
    return Trained(
        module, load_encoder(processed), EncodedSplit.load(processed / "test.pt"), tokens_kept(module.hparams.model)
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    """Torch on one core: these tests run beside others (integrated gradients are many small passes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hf_offline() -> None:
    """Hugging Face offline for the tiny BERT's training (it reads only local files)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TOKENIZERS_PARALLELISM", "false")
        yield


def test_contributions_add_up_to_the_logit(trained: Trained) -> None:
    """Exact models: bias + contributions == logit to 1e-5; integrated gradients: the gap (Captum's
    convergence delta) under 5% of |logit - baseline logit| with the default steps."""
    batch = trained.batch()
    explanations = trained.explanations
    with torch.no_grad():
        logits = trained.module(batch).double()
    assert len(explanations) == len(trained.test)
    exact = not hasattr(trained.module.backbone, "lstm") and not hasattr(trained.module.backbone, "encoder")
    for b, explanation in enumerate(explanations):
        assert explanation.predicted == int(logits[b].argmax())
        assert explanation.logit == pytest.approx(float(logits[b, explanation.predicted]), abs=1e-6)
        assert len(explanation.tokens) == len(explanation.contributions) > 0
        completed = explanation.baseline + sum(explanation.contributions)
        assert explanation.gap == pytest.approx(abs(completed - explanation.logit), abs=1e-4)
        if exact:
            assert explanation.method == EXACT
            assert completed == pytest.approx(explanation.logit, abs=1e-5)
        else:
            assert explanation.method == INTEGRATED_GRADIENTS
            difference = abs(explanation.logit - explanation.baseline)
            assert explanation.gap < 0.05 * difference, (b, explanation.gap, difference, DEFAULT_STEPS)
    # A target other than the prediction is explained as asked.
    other = (logits.argmax(dim=1) + 1) % logits.size(1)
    asked = explain_batch(trained.module, trained.encoder, trained.batch([0]), targets=other[:1])[0]
    assert asked.predicted == int(other[0])
    assert asked.logit == pytest.approx(float(logits[0, other[0]]), abs=1e-6)


def test_a_long_document_is_explained_over_all_its_windows(trained: Trained) -> None:
    """A pretrained model reads a long document as windows of max_len tokens (encoder.truncation=
    chunks): every token of every window gets its contribution, and they still add up."""
    if type(trained.module.backbone).__name__ != "HuggingFaceClassifier":
        pytest.skip("windows are the pretrained models' (models/hf.py)")
    first, second = trained.batch([0]), trained.batch([6])
    tokens = torch.cat([first["tokens"], second["tokens"], first["tokens"]])  # 3 windows: > 2 * max_len (64)
    assert 2 * trained.module.backbone.max_len < tokens.numel() <= trained.max_len
    batch = {"tokens": tokens, "offsets": torch.zeros(1, dtype=torch.int64), "lengths": torch.tensor([tokens.numel()])}
    explanation = explain_batch(trained.module, trained.encoder, batch)[0]
    assert len(explanation.contributions) == tokens.numel()
    tails = [explanation.contributions[64 * w + 10] for w in range(3)]
    assert all(value != 0 for value in tails)  # a text token of each window
    assert explanation.gap < 0.05 * abs(explanation.logit - explanation.baseline)


def probability_without(trained: Trained, batch: dict[str, torch.Tensor], removed: set[str], target: int) -> float:
    """The probability of class ``target`` for the one-document ``batch`` with every position whose
    token is in ``removed`` taken out (placeholders, a pretrained tokenizer's [CLS] and [SEP], stay)."""
    placeholders = trained.encoder.placeholder_ids()
    ids = batch["tokens"].tolist()
    marks = [token in removed and i not in placeholders for token, i in zip(trained.encoder.display_tokens(ids), ids)]
    kept = batch["tokens"][~torch.tensor(marks, dtype=torch.bool)]
    smaller = {"tokens": kept, "offsets": torch.zeros(1, dtype=torch.int64), "lengths": torch.tensor([kept.numel()])}
    with torch.no_grad():
        return float(trained.module(smaller).softmax(dim=1)[0, target])


def test_deleting_the_top_tokens_hurts_the_prediction_more_than_deleting_random_ones(trained: Trained) -> None:
    """Deletion (faithfulness, as ERASER's comprehensiveness): the predicted class's probability
    falls more when a text's top-5 tokens go (the 5 with the largest summed contributions toward
    it; every position of each) than, on average, when 5 random distinct tokens go, in at least
    80% of the test documents. A fastText bigram "a b" among the top 5 deletes its words."""
    rng = random.Random(0)
    placeholders = trained.encoder.placeholder_ids()
    better = 0
    for index in range(len(trained.test)):
        batch = trained.batch([index])
        explanation = trained.explanations[index]
        ids = batch["tokens"].tolist()
        shown = trained.encoder.display_tokens(ids)
        known = set(shown)
        # The tokens that pushed the prediction most toward its class (largest summed contributions).
        top = sorted(explanation.totals().items(), key=lambda item: -item[1])[:DELETED]
        top = {token for token, _ in top}
        deleted = {word for token in top for word in ([token] if token in known else token.split(" "))}
        removable = sorted({token for token, i in zip(shown, ids) if i not in placeholders})
        target = explanation.predicted
        full = probability_without(trained, batch, set(), target)
        top_drop = full - probability_without(trained, batch, deleted, target)
        draws = [set(rng.sample(removable, min(DELETED, len(removable)))) for _ in range(RANDOM_DRAWS)]
        random_drop = sum(full - probability_without(trained, batch, draw, target) for draw in draws) / RANDOM_DRAWS
        better += top_drop > random_drop
    assert better >= 0.8 * len(trained.test), f"{better} of {len(trained.test)}"


def test_top_sums_each_token_over_its_positions_largest_magnitude_first() -> None:
    explanation = Explanation(0, 1.0, 0.1, ["a", "b", "a", "c"], [0.2, -0.5, 0.2, 0.1], 0.0, EXACT)
    assert explanation.totals() == {"a": 0.4, "b": -0.5, "c": 0.1}
    assert explanation.top(2) == [("b", -0.5), ("a", 0.4)]
    assert explanation.top(10) == [("b", -0.5), ("a", 0.4), ("c", 0.1)]


def test_top_features_name_each_class_by_its_own_words(trained: Trained) -> None:
    features = top_features(trained.module, trained.encoder, 5)
    backbone = type(trained.module.backbone).__name__
    if backbone not in ("FastText", "LinearClassifier"):
        assert features is None
        return
    assert sorted(features) == [str(c) for c in range(len(LABELS))]
    for c, label in enumerate(LABELS):
        ranked = features[str(c)]
        assert len(ranked) == 5 and [w for _, w in ranked] == sorted((w for _, w in ranked), reverse=True)
        words = set(GROUP_WORDS[label]) | set(label.split("."))
        # A word feature, or (linear) a character n-gram of one of the class's words.
        own = [f for f, _ in ranked if f in words or any(f.strip("'").strip("_") in word for word in words)]
        assert len(own) >= 3, (label, ranked)


# The shipped model (the default fastText, evaluated): the pyfunc, predict and the server.


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory, tiny_archive) -> TinyRun:
    return tiny_run(tmp_path_factory.mktemp("shipped"), *tiny_archive)


def test_evaluate_writes_and_logs_each_classes_top_features(shipped: TinyRun) -> None:
    written = json.loads((shipped.cfg.paths.reports / "top_features.json").read_text(encoding="utf-8"))
    assert list(written) == LABELS
    for label, ranked in written.items():
        assert len(ranked) == 20
        assert ranked[0][0] in GROUP_WORDS[label] or ranked[0][0] in label.split(".")
    with mlflow_tracking_uri(shipped.uri):
        logged = mlflow.artifacts.load_text(f"runs:/{shipped.run_id}/evaluation/top_features.json")
    assert json.loads(logged) == written


def test_the_pyfunc_explains_with_params_and_keeps_its_columns_without(shipped: TinyRun) -> None:
    with mlflow_tracking_uri(shipped.uri):
        model = mlflow.pyfunc.load_model(f"runs:/{shipped.run_id}/model")
    params = model.metadata.signature.params
    assert [(p.name, p.dtype.name, p.default) for p in params.params] == [("explain", "long", 0)]
    frame = pd.DataFrame({"text": list(TEXTS.values())})
    plain = model.predict(frame)
    assert list(plain.columns) == ["label", *LABELS]
    explained = model.predict(frame, params={"explain": 3})
    assert list(explained.columns) == ["label", *LABELS, "explanation"]
    assert explained[["label", *LABELS]].equals(plain)
    for (group, text), row in zip(TEXTS.items(), json.loads(f"[{','.join(explained['explanation'])}]")):
        assert len(row) == 3 and all(token in text.split() for token, _ in row)
        assert [abs(c) for _, c in row] == sorted((abs(c) for _, c in row), reverse=True)
        assert row[0][0] in GROUP_WORDS[group] and row[0][1] > 0  # its own word pushed it most
    python_model = model.unwrap_python_model()
    for bad in (-1, 2.5, "3"):
        with pytest.raises(TextclfError, match=r"^params\.explain: expected how many tokens"):
            python_model.predict(None, ["sail mast"], params={"explain": bad})
    with pytest.raises(TextclfError, match=r"text 1 \('zzzz qqqq'\) has no token the model knows"):
        python_model.predict(None, ["sail mast", "zzzz qqqq"], params={"explain": 2})


def test_predict_explain_prints_a_table_per_text_and_json(
    shipped: TinyRun, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = ["--run-id", shipped.run_id, "--tracking-uri", shipped.uri]
    text = TEXTS["sci.orbits"]
    main([*source, text, "--explain"])  # K omitted: 10
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("sci.orbits  1.000  orbit rocket")  # the plain line, as the table's title
    assert "toward sci.orbits" in out
    rows = [
        line.split() for line in lines if line.strip()[:1].isdigit()
    ]  # rank, token (a bigram: two words), contribution
    assert [int(row[0]) for row in rows] == list(range(1, 11))
    assert all(" ".join(row[1:-1]) in text and row[-1][0] in "+-" for row in rows)

    main([*source, "--explain", "2", "--json", text, TEXTS["talk.bread"]])
    answer = json.loads(capsys.readouterr().out)
    assert [row["label"] for row in answer] == ["sci.orbits", "talk.bread"]
    assert all(len(row["explanation"]) == 2 for row in answer)
    assert set(answer[1]["explanation"][0]) == {"token", "contribution"}

    for argv, message in (
        (["--explain", "0", text], "error: [predict] --explain 0: give how many tokens to show per text, 1 or more"),
        (["--explain", "-3", text], "error: [predict] --explain -3: give how many tokens"),
        ([text, "qqqq zzzz", "--explain"], "error: [predict] --explain: text 1 ('qqqq zzzz') has no token the model"),
    ):
        with pytest.raises(SystemExit):
            main([*source, *argv])
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err


@pytest.mark.slow
def test_mlflow_models_serve_explains_with_the_explain_param(shipped: TinyRun, tmp_path: Path) -> None:
    from test_serving import post, served_model

    with served_model(f"runs:/{shipped.run_id}/model", shipped.uri, tmp_path) as base:
        records = [{"text": text} for text in TEXTS.values()]
        status, answer = post(
            f"{base}/invocations", json.dumps({"dataframe_records": records, "params": {"explain": 4}}).encode()
        )
        assert status == 200, answer
        for group, row in zip(TEXTS, answer["predictions"]):
            assert row["label"] == group
            explanation = json.loads(row["explanation"])
            assert len(explanation) == 4 and explanation[0][0] in GROUP_WORDS[group]
        status, answer = post(f"{base}/invocations", json.dumps({"dataframe_records": records}).encode())
        assert status == 200 and "explanation" not in answer["predictions"][0]
        status, answer = post(
            f"{base}/invocations",
            json.dumps({"dataframe_records": [{"text": "zzzz"}], "params": {"explain": 3}}).encode(),
        )
        assert status == 400 and "has no token the model knows" in answer["message"]
