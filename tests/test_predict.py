"""`python -m textclf.predict`: predictions from a run or a registered alias, and registering."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tiny_run import LABELS, TEXTS, TinyRun, tiny_run

from textclf.errors import TextclfError
from textclf.predict import latest_run_id, main, predict, read_texts, register, run_model_uri

from conftest import REPO_ROOT, subprocess_env


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_archive) -> TinyRun:
    return tiny_run(tmp_path_factory.mktemp("predict"), *tiny_archive)


def test_predict_from_a_run_gives_each_text_its_group(run: TinyRun) -> None:
    frame = predict(run_model_uri(run.run_id), list(TEXTS.values()), run.uri)
    assert list(frame.columns) == ["label", "probability", *LABELS]
    assert frame["label"].tolist() == list(TEXTS)
    assert frame["probability"].tolist() == frame[LABELS].max(axis=1).tolist()
    assert (frame["probability"] > 1 / len(LABELS)).all()


def test_register_points_the_champion_alias_at_the_newest_version(run: TinyRun) -> None:
    assert register(run.run_id, run.uri) == 1
    assert register(run.run_id, run.uri, alias="champion") == 2
    client = MlflowClient(run.uri)
    champion = client.get_model_version_by_alias("textclf", "champion")
    assert (int(champion.version), champion.run_id) == (2, run.run_id)
    frame = predict("models:/textclf@champion", list(TEXTS.values()), run.uri)
    assert frame["label"].tolist() == list(TEXTS)


def test_a_missing_run_or_alias_is_one_line(run: TinyRun) -> None:
    with pytest.raises(TextclfError, match=r"^cannot load model runs:/0123456789abcdef/model") as error:
        predict(run_model_uri("0123456789abcdef"), ["text"], run.uri)
    assert "\n" not in str(error.value)
    with pytest.raises(TextclfError, match="cannot load model models:/textclf@nobody"):
        predict("models:/textclf@nobody", ["text"], run.uri)
    with pytest.raises(TextclfError, match="cannot register the model of run 0123"):
        register("0123456789abcdef", run.uri, name="other")
    with pytest.raises(TextclfError, match="no MLflow store at"):
        predict(run_model_uri(run.run_id), ["text"], run.uri.replace("mlflow.db", "missing.db"))
    with pytest.raises(TextclfError, match="no texts"):
        predict(run_model_uri(run.run_id), [], run.uri)


def test_loading_a_model_leaves_nothing_in_the_temporary_directory(
    run: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile reads $TMPDIR again
    assert tempfile.gettempdir() == str(scratch)
    register(run.run_id, run.uri, name="textclf-tmp", alias="champion")
    path = list(sys.path)
    from_run = predict(run_model_uri(run.run_id), list(TEXTS.values()), run.uri)
    from_registry = predict("models:/textclf-tmp@champion", list(TEXTS.values()), run.uri)
    assert from_run.equals(from_registry) and from_run["label"].tolist() == list(TEXTS)
    assert list(scratch.iterdir()) == []  # MLflow's own copy would be left here (50-65 MB each)
    assert sys.path == path  # the copy's code/ directory is not left on sys.path either


def test_texts_come_from_arguments_a_file_or_stdin(tmp_path: Path) -> None:
    assert read_texts(["a b", "c"], None, io.StringIO("ignored")) == ["a b", "c"]
    file = tmp_path / "texts.txt"
    file.write_text("first text\n\n  \nsecond text\n", encoding="utf-8")
    assert read_texts([], file, io.StringIO("ignored")) == ["first text", "second text"]
    assert read_texts([], None, io.StringIO("from stdin\nand more\n")) == ["from stdin", "and more"]
    with pytest.raises(TextclfError, match="not both"):
        read_texts(["a"], file, io.StringIO(""))
    with pytest.raises(TextclfError, match="no such file"):
        read_texts([], tmp_path / "missing.txt", io.StringIO(""))


def test_a_utf8_file_is_decoded_as_the_sources_decode_the_corpus(tmp_path: Path) -> None:
    file = tmp_path / "utf8.txt"
    file.write_bytes("café 東京\r\n\nnaïve\u2028still one line\n".encode())
    assert read_texts([], file, io.StringIO("ignored")) == ["café 東京", "naïve\u2028still one line"]
    stdin = io.TextIOWrapper(io.BytesIO(file.read_bytes()), encoding="ascii")  # its bytes are read, not its text
    assert read_texts([], None, stdin) == read_texts([], file, io.StringIO(""))


def test_a_line_that_is_not_utf8_is_read_as_latin1_and_the_others_as_utf8(tmp_path: Path) -> None:
    file = tmp_path / "mixed.txt"
    file.write_bytes("café crème\r\n".encode("latin-1") + "naïve 東京\n".encode() + b"wait\x85 one line\n")
    with pytest.raises(UnicodeDecodeError):
        file.read_text(encoding="utf-8")  # what used to crash predict --file
    assert read_texts([], file, io.StringIO("ignored")) == ["café crème", "naïve 東京", "wait\x85 one line"]
    assert read_texts([], None, io.TextIOWrapper(io.BytesIO(file.read_bytes()))) == read_texts(
        [], file, io.StringIO("")
    )


def test_main_prints_a_line_per_text_or_json(run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(["--run-id", run.run_id, "--tracking-uri", run.uri, *TEXTS.values()])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(TEXTS)
    assert all(0.0 < float(line.split()[1]) <= 1.0 for line in lines)
    file = tmp_path / "texts.txt"
    file.write_text("\n".join(TEXTS.values()) + "\n", encoding="utf-8")
    main(["--run-id", run.run_id, "--tracking-uri", run.uri, "--file", str(file), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [row["label"] for row in rows] == list(TEXTS)
    assert [row["text"] for row in rows] == list(TEXTS.values())
    assert all(sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) for row in rows)
    main(["--register", "--run-id", run.run_id, "--tracking-uri", run.uri, "--name", "main", "--alias", "best"])
    assert capsys.readouterr().out.strip().endswith("use models:/main@best")
    assert MlflowClient(run.uri).get_model_version_by_alias("main", "best").run_id == run.run_id
    with pytest.raises(SystemExit) as exit_info:
        main(["--register", "--model-uri", "models:/textclf@champion"])
    assert exit_info.value.code == 2  # argparse: --register needs --run-id
    assert "--register takes --run-id" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--run-id", "0123456789abcdef", "--tracking-uri", run.uri, "some text"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: [predict] cannot load model runs:/0123456789abcdef/model")


def test_the_cli_classifies_stdin_with_the_champion(run: TinyRun) -> None:
    register(run.run_id, run.uri, name="cli")
    predicted = subprocess.run(
        [sys.executable, "-m", "textclf.predict", "--model-uri", "models:/cli@champion"],
        input="\n".join(TEXTS.values()) + "\n",
        env=subprocess_env(MLFLOW_TRACKING_URI=run.uri),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert [line.split()[0] for line in predicted.stdout.splitlines()] == list(TEXTS)


def test_without_a_run_id_predict_uses_the_run_of_the_last_repro(
    run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = run.cfg.paths.models.parent  # holds models/mlflow_run.json, as a repository after `dvc repro`
    assert latest_run_id(root) == run.run_id
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(root)
    main(["--tracking-uri", run.uri, *TEXTS.values()])
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == list(TEXTS)

    elsewhere = tmp_path / "repo"
    (elsewhere / "trained").mkdir(parents=True)
    (elsewhere / "trained" / "mlflow_run.json").write_text(json.dumps({"run_id": "abc"}), encoding="utf-8")
    (elsewhere / "params.yaml").write_text("paths:\n  models: trained\n", encoding="utf-8")
    assert latest_run_id(elsewhere) == "abc"  # paths.models of params.yaml

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--tracking-uri", run.uri, "some text"])
    assert exit_info.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: [predict] no --run-id or --model-uri given, and no ")
    assert str(tmp_path / "models" / "mlflow_run.json") in line and "dvc repro" in line
