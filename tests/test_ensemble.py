"""`python -m textclf.ensemble`: logged runs combined into one logged model, weights from validation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from tiny_run import LABELS, TEXTS, TinyRun, tiny_run

from textclf import ensemble as ensemble_module
from textclf.ensemble import LOG, MEAN, check_members, combine, ensemble, fetch_member, fit, fit_weights, main
from textclf.errors import TextclfError
from textclf.predict import predict, register, run_model_uri
from textclf.provenance import HELD_OUT_TAG


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('ensemble-store') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory, tiny_archive, store: str) -> list[TinyRun]:
    """Two members of one store, on the same data and split: different sizes, training seeds and
    vocabularies (encoder.min_freq), so different encoders of the same texts."""
    first = tiny_run(tmp_path_factory.mktemp("member-a"), *tiny_archive, uri=store)
    second = tiny_run(
        tmp_path_factory.mktemp("member-b"),
        *tiny_archive,
        "seed=1",
        "model.embed_dim=16",
        "encoder.min_freq=2",
        "trainer.max_epochs=2",
        uri=store,
    )
    return [first, second]


@pytest.fixture(scope="module")
def ensembled(members: list[TinyRun], store: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    summary = tmp_path_factory.mktemp("ensemble-summary") / "ensemble.json"
    returned = ensemble([run_model_uri(run.run_id) for run in members], store, summary)
    assert json.loads(summary.read_text(encoding="utf-8")) == returned
    return returned


def test_the_ensemble_is_one_new_run_whose_model_predicts_like_a_single_runs(
    ensembled: dict, members: list[TinyRun], store: str
) -> None:
    run = MlflowClient(store).get_run(ensembled["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_id not in {m.run_id for m in members}
    assert run.data.tags["ensemble.members"] == ",".join(m.run_id for m in members)
    assert run.data.params["ensemble.combine"] == ensembled["combine"] in (MEAN, LOG)
    assert run.data.metrics["test/accuracy"] == ensembled["test"]["accuracy"]
    logged = {"test/f1_macro", "test/loss", "test/ece", "val/loss", "member0/test/accuracy", "member1/test/accuracy"}
    assert logged <= set(run.data.metrics)
    frame = predict(ensembled["model_uri"], list(TEXTS.values()), store)
    single = predict(run_model_uri(members[0].run_id), list(TEXTS.values()), store)
    assert list(frame.columns) == list(single.columns) == ["label", "probability", *LABELS]
    assert frame["label"].tolist() == list(TEXTS)
    assert frame[LABELS].sum(axis=1).tolist() == pytest.approx([1.0] * len(TEXTS), abs=1e-9)
    # The registry takes it as any run's model.
    register(ensembled["run_id"], store, name="ensemble", alias="champion")
    assert predict("models:/ensemble@champion", list(TEXTS.values()), store).equals(frame)


def test_the_shipped_ensemble_packs_its_members_and_loads_without_their_runs(
    ensembled: dict, members: list[TinyRun], store: str, tmp_path: Path
) -> None:
    import mlflow

    copy = mlflow.artifacts.download_artifacts(ensembled["model_uri"], dst_path=str(tmp_path), tracking_uri=store)
    client = MlflowClient(store)
    for run in members:
        client.delete_run(run.run_id)  # the store no longer gives the members' runs
    try:
        model = mlflow.pyfunc.load_model(copy)  # a local directory: no store read at all
        frame = model.predict(pd.DataFrame({"text": list(TEXTS.values())}))
    finally:
        for run in members:
            client.restore_run(run.run_id)
    assert frame["label"].tolist() == list(TEXTS)
    spec = json.loads((Path(copy) / "artifacts" / "ensemble.json").read_text(encoding="utf-8"))
    assert spec["weights"] == pytest.approx([m["weight"] for m in ensembled["members"]], abs=1e-6)
    assert (Path(copy) / "artifacts" / "member0" / "MLmodel").is_file()


def test_the_ensemble_is_no_worse_on_validation_than_its_best_member(ensembled: dict) -> None:
    best = min(member["val"]["loss"] for member in ensembled["members"])
    assert ensembled["val"]["loss"] <= best + 1e-6
    assert sum(member["weight"] for member in ensembled["members"]) == pytest.approx(1.0, abs=1e-5)
    assert ensembled["num_val"] == 12 and ensembled["num_test"] == 18  # 48 x 0.25 held out; the archive's test


def test_the_members_score_the_rebuilt_test_split_as_evaluate_scored_theirs(ensembled: dict) -> None:
    # The texts read back from the raw data are the documents evaluate scored: each member's
    # accuracy on them, through its pyfunc, is the test/accuracy its run logged.
    for member in ensembled["members"]:
        assert member["test"]["accuracy"] == pytest.approx(member["logged_test_accuracy"], abs=1e-6)


def test_the_weights_come_from_the_validation_split_alone(
    ensembled: dict, members: list[TinyRun], store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = ensemble_module.held_out_documents

    def other_test_labels(member, raw):  # noqa: ANN001, ANN202
        held = read(member, raw)
        held.labels["test"] = (held.labels["test"] + 1) % len(held.classes)  # every test label wrong
        return held

    monkeypatch.setattr(ensemble_module, "held_out_documents", other_test_labels)
    again = ensemble([run_model_uri(run.run_id) for run in members], store, tmp_path / "again.json")
    assert again["combine"] == ensembled["combine"]
    assert [m["weight"] for m in again["members"]] == [m["weight"] for m in ensembled["members"]]
    assert again["val"] == ensembled["val"]
    assert again["test"]["accuracy"] != ensembled["test"]["accuracy"]


@pytest.mark.parametrize("split_seed", [0, 1])
def test_the_held_out_texts_read_again_are_the_documents_preprocess_wrote(tmp_path: Path, split_seed: int) -> None:
    # A folder without splits: test and validation are both held out (stratified, seeded).
    from textclf.config import validate
    from textclf.data.encoded import EncodedSplit
    from textclf.data.splits import read_held_out
    from textclf.encoders.base import load_encoder
    from textclf.params import compose
    from textclf.stages.download import download
    from textclf.stages.preprocess import preprocess

    from conftest import REPO_ROOT
    from corpora import texts, write_folder

    corpus = write_folder(tmp_path / "corpus", texts(per_class=20))
    paths = [f"paths.{name}={tmp_path / name}" for name in ("raw", "processed", "cache")]
    overrides = ["data=folder", f"data.path={corpus}", f"data.split_seed={split_seed}", "encoder.min_freq=1"]
    cfg = validate(compose([*overrides, *paths], root=REPO_ROOT))
    download(cfg, cfg.paths.raw, progress=False)
    manifest = preprocess(cfg, cfg.paths.raw, cfg.paths.processed, parallel=False)
    held = read_held_out(cfg.data, cfg.paths.raw)
    assert held.sha256 == manifest["held_out_sha256"]  # what the run tag records, of the texts read back
    encoder = load_encoder(cfg.paths.processed)
    for name in ("val", "test"):
        written = EncodedSplit.load(cfg.paths.processed / f"{name}.pt")
        encoded = encoder.encode(held.texts[name])
        assert torch.equal(encoded["tokens"], written.tokens.long())
        assert torch.equal(encoded["offsets"], written.offsets[:-1])
        assert held.labels[name].tolist() == written.labels.tolist()
    assert (len(held.texts["val"]), len(held.texts["test"])) == (6, 12)
    other = read_held_out(cfg.data.model_copy(update={"split_seed": split_seed + 1}), cfg.paths.raw)
    assert other.sha256 != held.sha256


def test_members_that_held_out_other_documents_fail_in_one_line(
    members: list[TinyRun], store: str, tmp_path: Path
) -> None:
    # Same data settings and content, other held-out documents: what a change of the source's
    # document order between two trainings leaves (the settings alone cannot tell).
    first, second = (fetch_member(run_model_uri(run.run_id), store, tmp_path / str(i)) for i, run in enumerate(members))
    assert first.tags[HELD_OUT_TAG] == second.tags[HELD_OUT_TAG] != "None"
    moved = dataclasses.replace(second, tags={**second.tags, HELD_OUT_TAG: "0" * 64})
    with pytest.raises(TextclfError, match="^members validated and tested on different documents: ") as error:
        check_members([first, moved])
    assert "\n" not in str(error.value)
    older = dataclasses.replace(second, tags={k: v for k, v in second.tags.items() if k != HELD_OUT_TAG})
    check_members([first, older])  # trained before the tag existed: the settings and content decide
    assert ensemble_module.held_out_documents(first, None).sha256 == first.tags[HELD_OUT_TAG]
    with pytest.raises(TextclfError, match=r"its validation and test documents are not the ones .* give --raw$"):
        ensemble_module.held_out_documents(moved, None)


def test_fitted_weights_are_deterministic_on_the_simplex_and_drop_a_useless_member() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (200,), generator=generator)
    good = torch.nn.functional.one_hot(labels, 4).double() * 3 + torch.rand(
        200, 4, generator=generator, dtype=torch.float64
    )
    good = good.softmax(dim=1)
    useless = torch.full((200, 4), 0.25, dtype=torch.float64)
    probabilities = torch.stack([useless, good])
    for how in (MEAN, LOG):
        weights, loss = fit_weights(probabilities, labels, how)
        assert torch.equal(weights, fit_weights(probabilities, labels, how)[0])
        assert float(weights.sum()) == pytest.approx(1.0) and bool((weights >= 0).all())
        assert float(weights[1]) > 0.9
        combined = combine(probabilities, weights, how)
        assert combined.sum(dim=1).tolist() == pytest.approx([1.0] * 200)
        assert loss <= float(-good.gather(1, labels[:, None]).log().mean()) + 1e-9
    chosen = fit(probabilities, labels)
    assert chosen["combine"] == min(chosen["val_loss"], key=chosen["val_loss"].get)


def test_members_of_another_split_fail_in_one_line(
    members: list[TinyRun], store: str, tiny_archive, tmp_path: Path
) -> None:
    other = tiny_run(tmp_path / "other", *tiny_archive, "data.split_seed=1", "trainer.max_epochs=1", uri=store)
    uris = [run_model_uri(members[0].run_id), run_model_uri(other.run_id)]
    with pytest.raises(TextclfError, match=r"^members trained on different data: data\.split_seed is 0 ") as error:
        ensemble(uris, store, tmp_path / "summary.json")
    assert "\n" not in str(error.value) and "data.split_seed=0" in str(error.value)
    assert not (tmp_path / "summary.json").exists()


def test_members_of_other_data_or_classes_fail_in_one_line(members: list[TinyRun], store: str, tmp_path: Path) -> None:
    first, second = (fetch_member(run_model_uri(run.run_id), store, tmp_path / str(i)) for i, run in enumerate(members))
    check_members([first, second])
    changed = dataclasses.replace(second, tags={**second.tags, "data_content_sha256": "f" * 64})
    with pytest.raises(TextclfError, match="^members trained on different data: .* read content "):
        check_members([first, changed])
    sha = {**second.config, "data": {**second.config["data"], "sha256": "0" * 64}}
    with pytest.raises(TextclfError, match=r"^members trained on different data: data\.sha256 is "):
        check_members([first, dataclasses.replace(second, config=sha)])
    with pytest.raises(TextclfError, match="^members with different classes"):
        check_members([first, dataclasses.replace(second, labels=[*second.labels[:-1], "other"])])
    with pytest.raises(TextclfError, match="is given twice"):
        check_members([first, first])
    mirrors = {**second.config, "data": {**second.config["data"], "mirrors": ["https://example.org/x.tar.gz"]}}
    check_members([first, dataclasses.replace(second, config=mirrors)])  # where the bytes come from: no matter
    older = {**second.config, "data": {k: v for k, v in second.config["data"].items() if k != "holdout"}}
    check_members([first, dataclasses.replace(second, config=older)])  # logged before data.holdout: its default
    last = {**second.config, "data": {**second.config["data"], "holdout": "last"}}
    with pytest.raises(TextclfError, match=r"^members trained on different data: data\.holdout is 'stratified' "):
        check_members([first, dataclasses.replace(second, config=last)])


def test_an_unknown_run_or_missing_raw_data_fails_in_one_line(
    members: list[TinyRun], ensembled: dict, store: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--run-id", members[0].run_id, "--run-id", "0123456789abcdef", "--tracking-uri", store])
    assert exit_info.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: [ensemble] cannot load model runs:/0123456789abcdef/model from ")
    uris = [run_model_uri(run.run_id) for run in members]
    with pytest.raises(TextclfError, match=r"source\.json: not found, .*give --raw") as error:
        ensemble(uris, store, tmp_path / "summary.json", raw=tmp_path / "nowhere")
    assert "\n" not in str(error.value)
    with pytest.raises(TextclfError, match="an ensemble is no member"):
        ensemble([uris[0], ensembled["model_uri"]], store, tmp_path / "summary.json")
    with pytest.raises(SystemExit) as exit_info:
        main(["--run-id", members[0].run_id])
    assert exit_info.value.code == 2 and "at least two members" in capsys.readouterr().err


def test_the_cli_writes_the_summary_where_it_is_told(
    members: list[TinyRun], store: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    summary = tmp_path / "out" / "ensemble.json"
    version = register(members[0].run_id, store, name="member-a", alias=None)
    ids = ["--model-uri", f"models:/member-a/{version}", "--run-id", members[1].run_id]
    main([*ids, "--tracking-uri", store, "--summary", str(summary), "--combine", "log", "--run-name", "mine"])
    written = json.loads(summary.read_text(encoding="utf-8"))
    assert written["combine"] == "log" and list(written["val_loss_by_combination"]) == ["log"]
    assert [member["run_id"] for member in written["members"]] == [run.run_id for run in members]
    assert capsys.readouterr().out.startswith(f"ensemble: runs:/{written['run_id']}/model (log of 2 members")
    assert MlflowClient(store).get_run(written["run_id"]).info.run_name == "mine"


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_ensemble(ensembled: dict, store: str, tmp_path: Path) -> None:
    from test_serving import post, served_model

    with served_model(ensembled["model_uri"], store, tmp_path) as base:
        body = json.dumps({"dataframe_records": [{"text": text} for text in TEXTS.values()]})
        status, answer = post(f"{base}/invocations", body.encode())
    assert status == 200, answer
    assert [row["label"] for row in answer["predictions"]] == list(TEXTS)
    assert all(sum(row[name] for name in LABELS) == pytest.approx(1.0, abs=1e-9) for row in answer["predictions"])
