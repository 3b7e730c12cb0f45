"""The shipped model: the pyfunc each training logs, loaded in-process and served over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from tiny_run import LABELS, TEXTS, TinyRun, tiny_run

from textclf.encoders.base import ENCODER_FILE, load_encoder
from textclf.errors import TextclfError
from textclf.serving import TextclfModel, texts_of
from textclf.tracking import mlflow_tracking_uri

from conftest import subprocess_env


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_archive) -> TinyRun:
    """One tiny training, evaluated (so its model is logged), shared by this module's tests."""
    return tiny_run(tmp_path_factory.mktemp("trained"), *tiny_archive)


@pytest.fixture(scope="module")
def trained(run: TinyRun) -> tuple[str, str]:
    """(tracking URI, run id) of the tiny training."""
    return run.uri, run.run_id


def load(uri: str, model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    with mlflow_tracking_uri(uri):
        return mlflow.pyfunc.load_model(model_uri)


def test_the_logged_model_loads_and_predicts_the_right_groups(trained) -> None:
    uri, run_id = trained
    model = load(uri, f"runs:/{run_id}/model")
    frame = model.predict(pd.DataFrame({"text": list(TEXTS.values())}))
    assert list(frame.columns) == ["label", *LABELS]
    assert frame["label"].tolist() == list(TEXTS)
    probabilities = frame[LABELS].to_numpy()
    assert probabilities.min() >= 0.0 and probabilities.sum(axis=1) == pytest.approx([1.0] * 3, abs=1e-5)
    assert (probabilities.argmax(axis=1) == [LABELS.index(g) for g in TEXTS]).all()
    # The signature names the column, so MLflow's wrapper wants a DataFrame (or a Series named
    # "text"); the model itself also takes a plain list of strings.
    named = model.predict(pd.Series(list(TEXTS.values()), name="text"))
    assert named["label"].tolist() == list(TEXTS)
    listed = model.unwrap_python_model().predict(None, list(TEXTS.values()))
    assert listed.equals(frame)
    assert model.metadata.signature.inputs.input_names() == ["text"]


def test_the_model_packs_what_it_needs_and_pins_its_requirements(run: TinyRun, tmp_path: Path) -> None:
    uri, run_id = run.uri, run.run_id
    with mlflow_tracking_uri(uri):
        local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path)))
    artifacts = {p.name for p in (local / "artifacts").iterdir()}
    assert artifacts == {
        "model.safetensors",
        "hyperparameters.json",
        "encoder",
        "labels.json",
        "config.yaml",
        "calibration.json",
    }
    shipped = json.loads((local / "artifacts" / "calibration.json").read_text(encoding="utf-8"))
    assert shipped == {"temperature": json.loads((run.cfg.paths.reports / "metrics.json").read_text())["temperature"]}
    assert not list(local.rglob("*.ckpt"))  # the weights travel as safetensors, not as a checkpoint
    hyperparameters = json.loads((local / "artifacts" / "hyperparameters.json").read_text(encoding="utf-8"))
    assert hyperparameters["model"]["_target_"] == "textclf.models.fasttext.FastText"
    assert json.loads((local / "artifacts" / "labels.json").read_text()) == LABELS
    assert {p.name for p in (local / "artifacts" / "encoder").iterdir()} == {ENCODER_FILE, "vocab.txt"}
    encoder = json.loads((local / "artifacts" / "encoder" / ENCODER_FILE).read_text(encoding="utf-8"))
    assert set(encoder) == {"_target_", "lowercase", "token_pattern", "min_freq", "max_vocab", "remove"}
    assert (local / "code" / "textclf" / "serving.py").is_file()
    # Models-from-code: MLflow runs pyfunc_model.py to make the model; no pickle of ours.
    assert (local / "pyfunc_model.py").is_file() and not list(local.rglob("*.pkl"))
    assert not list((local / "code").rglob("__pycache__"))
    requirements = (local / "requirements.txt").read_text().split()
    assert all("==" in line for line in requirements)
    assert {line.split("==")[0] for line in requirements} >= {"mlflow", "torch", "lightning", "pandas", "safetensors"}
    assert len({line.split("==")[0] for line in requirements}) == len(requirements)  # each once
    assert (local / "serving_input_example.json").is_file()


def test_bad_input_is_named_in_one_line() -> None:
    with pytest.raises(TextclfError, match="expected a 'text' column"):
        texts_of(pd.DataFrame({"body": ["x"]}))
    with pytest.raises(TextclfError, match="must be a string"):
        texts_of([3])
    with pytest.raises(TextclfError, match=r"must be a string \(got NoneType: None\)"):
        texts_of(["fine", None])  # a JSON null
    assert texts_of("one text") == ["one text"]


def test_the_shipped_encoder_is_the_one_preprocess_saved(run: TinyRun) -> None:
    served = load(run.uri, f"runs:/{run.run_id}/model").unwrap_python_model().encoder
    processed = load_encoder(run.cfg.paths.processed)
    assert served.settings() == processed.settings() and served.vocabulary == processed.vocabulary
    texts = [*TEXTS.values(), "café 東京 naïve", ""]
    for key, tensor in processed.encode(texts).items():
        assert torch.equal(served.encode(texts)[key], tensor), key


class _Context:
    def __init__(self, artifacts: dict[str, str]) -> None:
        self.artifacts = artifacts


def downloaded_artifacts(uri: str, run_id: str, into: Path) -> dict[str, str]:
    """{artifact name: local path} of the run's model, as MLflow hands them to load_context."""
    with mlflow_tracking_uri(uri):
        local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(into)))
    files = {
        "encoder": "encoder",
        "labels": "labels.json",
        "weights": "model.safetensors",
        "hyperparameters": "hyperparameters.json",
        "config": "config.yaml",
        "calibration": "calibration.json",
    }
    return {name: str(local / "artifacts" / file) for name, file in files.items()}


def test_tampered_weights_hyperparameters_or_temperature_are_refused_when_the_model_loads(
    trained, tmp_path: Path
) -> None:
    artifacts = downloaded_artifacts(*trained, tmp_path)
    weights, hyperparameters = Path(artifacts["weights"]), Path(artifacts["hyperparameters"])
    original, values = weights.read_bytes(), json.loads(hyperparameters.read_text(encoding="utf-8"))

    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, weights)  # a pickle in its place
    with pytest.raises(TextclfError, match=r"model\.safetensors: refusing to load, not a safetensors file") as error:
        TextclfModel().load_context(_Context(artifacts))
    assert "\n" not in str(error.value) and not marker.exists()
    weights.write_bytes(original)

    tampered = {
        "naming a foreign target": (
            {**values, "model": {**values["model"], "_target_": "os.system"}},
            r"hyperparameters\.json: refusing to load, hyper_parameters\.model\._target_",
        ),
        "not fitting the weights": (
            {**values, "num_classes": values["num_classes"] + 1},
            r"model\.safetensors: refusing to load, its weights do not fit its hyperparameters",
        ),
    }
    for what, (changed, refused) in tampered.items():
        hyperparameters.write_text(json.dumps(changed), encoding="utf-8")
        with pytest.raises(TextclfError, match=refused) as error:
            TextclfModel().load_context(_Context(artifacts))
        assert "\n" not in str(error.value), what
    hyperparameters.write_text("{not json", encoding="utf-8")
    with pytest.raises(TextclfError, match=r"hyperparameters\.json: refusing to load, not JSON"):
        TextclfModel().load_context(_Context(artifacts))
    hyperparameters.write_text(json.dumps(values), encoding="utf-8")
    calibration = Path(artifacts["calibration"])
    temperature = calibration.read_text(encoding="utf-8")
    calibration.write_text('{"temperature": 0}', encoding="utf-8")
    with pytest.raises(TextclfError, match=r"calibration\.json: refusing to load, the temperature must be a positive"):
        TextclfModel().load_context(_Context(artifacts))
    calibration.write_text(temperature, encoding="utf-8")
    TextclfModel().load_context(_Context(artifacts))  # whole again: it loads


def test_a_tampered_encoder_is_refused_when_the_model_loads(trained, tmp_path: Path) -> None:
    artifacts = downloaded_artifacts(*trained, tmp_path)
    description = Path(artifacts["encoder"]) / ENCODER_FILE
    settings = json.loads(description.read_text(encoding="utf-8"))
    description.write_text(json.dumps({**settings, "_target_": "os.system"}), encoding="utf-8")
    with pytest.raises(TextclfError, match="refusing to build encoder 'os.system'") as error:
        TextclfModel().load_context(_Context(artifacts))
    assert "\n" not in str(error.value)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (str(self.marker),))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SERVER_START_TIMEOUT_SECONDS = 180.0


def post(url: str, body: bytes) -> tuple[int, dict]:
    """-> (HTTP status, JSON answer) of a JSON POST; the answer names no file of the server's."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    assert "Traceback" not in text and ".py" not in text and "site-packages" not in text, text
    return status, json.loads(text)


@contextlib.contextmanager
def served_model(model_uri: str, tracking_uri: str, tmp_path: Path) -> Iterator[str]:
    """Runs `mlflow models serve` on ``model_uri`` (127.0.0.1, a free port, one worker, this
    environment); yields its base URL once /ping answers, and stops it (its process group) after."""
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            str(mlflow_cli),
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=subprocess_env(MLFLOW_TRACKING_URI=tracking_uri, TMPDIR=str(tmp_path)),  # its copy of the model lands there
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the CLI runs the web server as a child
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
        while True:
            assert server.poll() is None, f"server exited:\n{(tmp_path / 'server.log').read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "server did not answer /ping in time"
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the group of the process started above, only
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.mark.slow
def test_mlflow_models_serve_answers_predictions_and_bad_requests_in_one_line(trained, tmp_path: Path) -> None:
    uri, run_id = trained
    with served_model(f"runs:/{run_id}/model", uri, tmp_path) as base:
        body = json.dumps({"dataframe_records": [{"text": text} for text in TEXTS.values()]})
        status, answer = post(f"{base}/invocations", body.encode())
        assert status == 200, answer
        predictions = answer["predictions"]
        assert [row["label"] for row in predictions] == list(TEXTS)
        for row in predictions:
            assert sum(row[label] for label in LABELS) == pytest.approx(1.0, abs=1e-5)
            assert row[row["label"]] == max(row[label] for label in LABELS)
        # Bad requests: 400, and a message without a stack trace or a path of the server's.
        for records, message in (
            ([{"text": "fine"}, {"text": 3}], "model input: every text must be a string (got int: 3)"),
            ([{"text": None}], "model input: every text must be a string (got NoneType: None)"),
        ):
            status, answer = post(f"{base}/invocations", json.dumps({"dataframe_records": records}).encode())
            assert (status, answer["message"]) == (400, message)
            assert "stack_trace" not in answer
        # These two MLflow answers itself, before the model sees the request.
        status, answer = post(f"{base}/invocations", json.dumps({"dataframe_records": [{"body": "x"}]}).encode())
        assert status == 400 and "missing inputs ['text']" in answer["message"]
        status, answer = post(f"{base}/invocations", b'{"dataframe_records": [')
        assert status == 400 and answer["message"].startswith("Invalid input. Ensure that input is a valid JSON")


def test_the_shipped_config_masks_secrets() -> None:
    from textclf.serving import shareable_config

    config = {
        "data": {"url": "https://user:hunter2@example.org/a.tar.gz", "min_freq": 1},
        "tracking": {"uri": None, "auth_token": "abc"},
    }
    assert shareable_config(config) == {
        "data": {"url": "https://***@example.org/a.tar.gz", "min_freq": 1},
        "tracking": {"uri": None, "auth_token": "***"},
    }
