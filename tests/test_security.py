"""Security: checkpoints load weights only and build nothing they name, logged params carry no
secrets, and a hostile archive writes nothing anywhere."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import tarfile
import uuid
from pathlib import Path

import pytest
import torch
from hydra.utils import get_object
from tiny_run import TinyRun, tiny_run

from textclf.errors import TextclfError
from textclf.models.classifier import TextClassifier
from textclf.predict import load_model
from textclf.redact import MASK, mask_userinfo, redact_secrets
from textclf.stages.evaluate import load_checkpoint
from textclf.stages.preprocess import preprocess

from conftest import build_archive


class RunsCode:
    """Unpickling this calls os.mkdir(marker): a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (str(self.marker),))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    checkpoint, marker = tmp_path / "model.ckpt", tmp_path / "pwned"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": RunsCode(marker)}, checkpoint)
    with pytest.raises(TextclfError) as error:
        load_checkpoint(checkpoint)
    message = str(error.value)
    assert message.startswith(f"{checkpoint}: refusing to load") and "\n" not in message
    assert not marker.exists()
    torch.load(checkpoint, weights_only=False)  # the payload is live: a full unpickle runs it
    assert marker.is_dir()


HYPERPARAMETERS = {  # what TextClassifier saves: a tiny fasttext, Adam, cosine
    "model": {
        "_target_": "textclf.models.fasttext.FastText",
        "embed_dim": 4,
        "ngram_buckets": 8,
        "dropout": 0.0,
        "weighting": "mean",
        "sparse": False,
        "max_len": None,
    },
    "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01, "weight_decay": 0.0},
    "scheduler": {
        "_target_": "textclf.models.schedules.cosine",
        "_partial_": True,
        "warmup_fraction": 0.1,
        "min_lr_ratio": 0.0,
    },
    "vocab_size": 10,
    "num_classes": 3,
    "label_smoothing": 0.0,
    "class_weights": None,
    "loss": "cross_entropy",
    "multi_label": False,
}


def payloads(marker: Path) -> dict[str, dict]:
    """Hydra sections that create ``marker`` when instantiated, one per way to run code. They
    pass torch.load(weights_only=True): strings, bytes, lists and dicts only."""
    module = marker.parent / f"textclf_payload_{uuid.uuid4().hex}.py"  # importing it (once) runs it
    module.write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    code = pickle.dumps(RunsCode(marker))
    return {
        "os.system": {"_target_": "os.system", "command": f"mkdir '{marker}'"},
        "subprocess.run": {"_target_": "subprocess.run", "args": ["mkdir", str(marker)]},
        "builtins.exec": {"_target_": "builtins.exec", "_args_": [f"import os; os.mkdir({str(marker)!r})"]},
        # The issue's file: torch.load with weights_only off, over an in-memory pickle.
        "torch.load": {
            "_target_": "torch.load",
            "f": {"_target_": "io.BytesIO", "initial_bytes": code},
            "weights_only": False,
        },
        "pickle.loads": {"_target_": "pickle.loads", "_args_": [code]},
        "importlib.import_module": {"_target_": "importlib.import_module", "name": module.stem},
    }


def build_blindly(value):  # noqa: ANN001, ANN201 - any section
    """What an unchecked builder does with a section: ``_target_(*_args_, **rest)``, nested
    sections first. (Hydra's own instantiate now blocklists some of these targets; a checkpoint
    must be safe whatever the builder.)"""
    if isinstance(value, list):
        return [build_blindly(item) for item in value]
    if not isinstance(value, dict) or "_target_" not in value:
        return value
    arguments = {key: build_blindly(item) for key, item in value.items() if key not in ("_target_", "_args_")}
    return get_object(value["_target_"])(*build_blindly(value.get("_args_", [])), **arguments)


def hostile(hyperparameters: dict, where: str, payload: dict) -> dict:
    """``hyperparameters`` with ``payload`` as a whole section (``model``) or as one argument
    (``model.embed_dim``)."""
    values = {key: dict(value) if isinstance(value, dict) else value for key, value in hyperparameters.items()}
    section, _, argument = where.partition(".")
    if argument:
        values[section][argument] = payload
    else:
        values[section] = payload
    return values


def save_checkpoint(path: Path, hyperparameters: dict) -> Path:
    """A checkpoint as train writes one (weights_only-loadable), with these hyperparameters."""
    weights = TextClassifier(**HYPERPARAMETERS).state_dict()
    torch.save({"state_dict": weights, "hyper_parameters": hyperparameters, "epoch": 0}, path)
    return path


def test_a_checkpoint_with_the_project_s_own_targets_loads_with_its_weights(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(tmp_path / "model.ckpt", HYPERPARAMETERS)
    module = load_checkpoint(checkpoint)
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(module.state_dict()[name], tensor) for name, tensor in saved.items())
    assert dict(module.hparams) == HYPERPARAMETERS


FOREIGN = ["os.system", "subprocess.run", "builtins.exec", "torch.load", "pickle.loads", "importlib.import_module"]
WHERE = ["model", "optimizer", "scheduler", "model.embed_dim", "optimizer.lr", "scheduler.warmup_fraction"]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("target", FOREIGN)
def test_a_checkpoint_naming_a_foreign_target_is_refused_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, where: str
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))  # where importlib.import_module finds the payload module
    marker = tmp_path / "pwned"
    payload = payloads(marker)[target]
    checkpoint = save_checkpoint(tmp_path / "model.ckpt", hostile(HYPERPARAMETERS, where, payload))
    with pytest.raises(TextclfError) as error:
        load_checkpoint(checkpoint)
    message = str(error.value)
    assert message.startswith(f"{checkpoint}: refusing to load, hyper_parameters.{where}") and "\n" not in message
    assert not marker.exists()
    with contextlib.suppress(RuntimeError):  # torch.load runs the pickle, then finds no magic number
        build_blindly(payload)  # the payload is live: building what it names runs it
    assert marker.is_dir()


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, tiny_archive) -> TinyRun:
    return tiny_run(tmp_path_factory.mktemp("logged"), *tiny_archive)


def jsonable(value):  # noqa: ANN001, ANN201 - a payload section
    """``value`` as JSON holds it: bytes (a pickle) as Latin-1 text, one character per byte."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [jsonable(item) for item in value]
    return value.decode("latin-1") if isinstance(value, bytes) else value


@pytest.mark.parametrize("target", FOREIGN)
def test_a_logged_model_whose_hyperparameters_name_a_foreign_target_is_refused_when_it_loads(
    logged: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "pwned"
    root = Path(logged.uri.removeprefix("sqlite:///")).parent
    [stored] = (root / "mlartifacts").glob("models/*/artifacts/artifacts/hyperparameters.json")  # in the store
    original = stored.read_text(encoding="utf-8")
    hyperparameters = hostile(json.loads(original), "model", jsonable(payloads(marker)[target]))
    stored.write_text(json.dumps(hyperparameters), encoding="utf-8")
    try:
        refused = (
            r"^cannot load model runs:/\w+/model from .*: "
            r"model/artifacts/hyperparameters\.json: refusing to load, hyper_parameters\.model\._target_"
        )
        with pytest.raises(TextclfError, match=refused) as error:
            load_model(f"runs:/{logged.run_id}/model", logged.uri)
        assert "\n" not in str(error.value)
        assert not marker.exists()
    finally:
        stored.write_text(original, encoding="utf-8")
    assert load_model(f"runs:/{logged.run_id}/model", logged.uri) is not None  # the store is whole again


SECRET_ENV = {
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
    "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz",
    "DB_PASSWORD": "correct-horse-battery",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-pass-123",
    "HOME": "/root",  # not a secret
}


def test_secrets_are_masked_in_logged_params() -> None:
    params = {
        "tracking.uri": "https://alice:hunter2@mlflow.example.org",
        "data.url": "https://user:pa55@example.org/20news.tar.gz",
        "data.mirrors": ["https://token@example.org/a.tar.gz", "/plain/path.tar.gz"],
        "tracking.run_name": "hf_abcdefghijklmnopqrstuvwxyz",  # equals $HF_TOKEN
        "tracking.experiment_name": "run-with-correct-horse-battery-inside",
        "extra.api_key": "anything at all",
        "extra.password": "hunter2",
        "encoder.token_pattern": r"(?u)\b\w\w+\b",  # a token pattern is not a token
        "paths.cache": "/root/.cache",
        "optimizer.lr": 0.05,
        "tracking.uri_unset": None,
    }
    redacted = redact_secrets(params, environ=SECRET_ENV)
    assert redacted == {
        "tracking.uri": f"https://{MASK}@mlflow.example.org",
        "data.url": f"https://{MASK}@example.org/20news.tar.gz",
        "data.mirrors": [f"https://{MASK}@example.org/a.tar.gz", "/plain/path.tar.gz"],
        "tracking.run_name": MASK,
        "tracking.experiment_name": f"run-with-{MASK}-inside",
        "extra.api_key": MASK,
        "extra.password": MASK,
        "encoder.token_pattern": r"(?u)\b\w\w+\b",
        "paths.cache": "/root/.cache",
        "optimizer.lr": 0.05,
        "tracking.uri_unset": None,
    }
    text = repr(redacted)
    for secret in ("hunter2", "pa55", "token@", *(v for k, v in SECRET_ENV.items() if k != "HOME")):
        assert secret not in text


def test_userinfo_is_masked_anywhere_in_a_line() -> None:
    line = "could not reach https://u:p@a.org/x; then ftp://me@b.org; then /c/d@e"
    assert mask_userinfo(line) == f"could not reach https://{MASK}@a.org/x; then ftp://{MASK}@b.org; then /c/d@e"


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", payload: bytes = b"pwned") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(payload) if kind == tarfile.REGTYPE else 0
    return info, payload if kind == tarfile.REGTYPE else None


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if not p.is_symlink()}


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "symlink-then-write", "hardlink-then-write"])
def test_a_hostile_archive_writes_nothing_anywhere(tmp_path: Path, tiny_config, attack: str) -> None:
    cfg = tiny_config()
    outside = tmp_path / "outside"
    outside.mkdir()
    depth = len(cfg.paths.processed.relative_to(tmp_path).parts)
    hostile = {
        "dotdot": [_member("20news-bydate-train/rec.boats/" + "../" * (depth + 2) + "outside/pwned")],
        "absolute": [_member(str(outside / "pwned"))],
        "symlink-then-write": [
            _member("20news-bydate-train/rec.boats/link", tarfile.SYMTYPE, str(outside)),
            _member("20news-bydate-train/rec.boats/link/pwned"),
        ],
        "hardlink-then-write": [
            _member("20news-bydate-train/rec.boats/hard", tarfile.LNKTYPE, str(outside / "victim")),
            _member("20news-bydate-train/rec.boats/hard"),
        ],
    }[attack]
    (outside / "victim").write_bytes(b"untouched")
    good = tmp_path / "good.tar.gz"
    build_archive(good, train_per_group=2, test_per_group=1)
    archive = tmp_path / "raw" / cfg.data.archive_name  # where the download stage puts it
    archive.parent.mkdir()
    with tarfile.open(good) as source, tarfile.open(archive, "w:gz") as tar:
        for info, payload in hostile:  # hostile members first, then a valid corpus
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
        for info in source.getmembers():
            tar.addfile(info, source.extractfile(info))
    before = _snapshot(tmp_path)
    with pytest.raises(TextclfError, match="refusing member") as error:
        preprocess(cfg, archive.parent, cfg.paths.processed)
    assert "\n" not in str(error.value)
    assert _snapshot(tmp_path) == before  # not a file added or changed under tmp_path
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_bytes() == b"untouched"
    assert not Path("/outside/pwned").exists()
