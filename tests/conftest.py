"""Shared fixtures: a tiny corpus archive built here, the real config shrunk to fit it.

Nothing here touches the network or the real 20 Newsgroups corpus.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import random
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from textclf.config import Config, validate
from textclf.params import compose

REPO_ROOT = Path(__file__).resolve().parents[1]

# Three made-up newsgroups, each with words of its own plus words every group uses.
GROUP_WORDS = {
    "rec.boats": "sail hull mast anchor keel harbor rudder deck tide knot".split(),
    "sci.orbits": "orbit rocket apogee thrust launch satellite payload booster lunar comet".split(),
    "talk.bread": "yeast flour oven dough crust knead rye loaf starter bake".split(),
}
COMMON_WORDS = "the and this that with from have about would there think people".split()


def message(group: str, index: int, rng: random.Random) -> bytes:
    """A Usenet-like message: header block, body, a quoted reply and a signature."""
    own = GROUP_WORDS[group]
    body = " ".join(rng.choice(own if rng.random() < 0.5 else COMMON_WORDS) for _ in range(30))
    text = (
        f"From: user{index}@example.org\nSubject: note {index} on {group}\nLines: 4\n\n"
        f"In article <{index}@example.org> someone writes:\n> {rng.choice(COMMON_WORDS)} quoted\n"
        f"{body}\ncaf\xe9 na\xefve\n--\nuser{index} signature\n"
    )
    return text.encode("latin-1")


def build_archive(path: Path, train_per_group: int = 16, test_per_group: int = 6, seed: int = 0) -> str:
    """Writes a gzip'd tar in the 20news-bydate layout; returns its SHA-256."""
    rng = random.Random(seed)
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("20news-bydate-train", train_per_group), ("20news-bydate-test", test_per_group)):
            for group in GROUP_WORDS:
                for index in range(count):
                    payload = message(group, index, rng)
                    info = tarfile.TarInfo(f"{split}/{group}/{1000 + index}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(path, sha256) of a 3-group archive: 48 training and 18 test messages."""
    path = tmp_path_factory.mktemp("archive") / "20news-bydate.tar.gz"
    return path, build_archive(path)


# Per model: small enough to train on the tiny corpus in a second or two.
TINY_MODELS = {
    "fasttext": ["model.embed_dim=8", "model.ngram_buckets=64"],
    "linear": [],  # its size is the tiny corpus's n-gram vocabulary
    "lstm": ["model.embed_dim=8", "model.hidden_dim=8", "model.max_len=32"],
    "transformer": [
        "model.embed_dim=8",
        "model.num_heads=2",
        "model.ff_dim=16",
        "model.num_layers=1",
        "model.max_len=32",
    ],
}


def shrink_overrides(archive: Path, sha256: str, model: str = "fasttext") -> list[str]:
    """Overrides that make the real config fit the tiny archive and train in seconds."""
    return [
        f"model={model}",
        *TINY_MODELS[model],
        f"data.url={archive}",
        f"data.sha256={sha256}",
        "data.mirrors=[]",
        "encoder.min_freq=1",
        "data.val_fraction=0.25",
        "optimizer.lr=0.05",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "train.batch_size=8",
        "train.eval_batch_size=16",
        "train.resume_interval_s=0",  # a resume point every epoch, so the resume path always runs
    ]


@pytest.fixture(autouse=True)
def no_data_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's $TEXTCLF_DATA_HOME (the real corpus) never stands in for a test's tiny archive."""
    monkeypatch.delenv("TEXTCLF_DATA_HOME", raising=False)


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Hugging Face offline, its caches under tmp_path (never the user's ~/.cache/huggingface).

    datasets and huggingface_hub read these variables when imported, so their module settings
    are set too (another test may have imported them already)."""
    import datasets.config
    import huggingface_hub.constants

    home = tmp_path / "hf-home"
    caches = {"HF_HOME": home, "HF_DATASETS_CACHE": home / "datasets", "HF_HUB_CACHE": home / "hub"}
    for name, value in {**caches, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, str(value))
    settings = {
        datasets.config: {
            "HF_HUB_OFFLINE": True,
            "HF_DATASETS_OFFLINE": True,
            "HF_CACHE_HOME": str(home),
            "HF_DATASETS_CACHE": home / "datasets",
            "HF_MODULES_CACHE": home / "modules",
            "DOWNLOADED_DATASETS_PATH": home / "datasets" / "downloads",
            "EXTRACTED_DATASETS_PATH": home / "datasets" / "downloads" / "extracted",
        },
        huggingface_hub.constants: {"HF_HUB_OFFLINE": True, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub")},
    }
    for module, values in settings.items():
        for name, value in values.items():
            if hasattr(module, name):
                monkeypatch.setattr(module, name, value)
    return home


@pytest.fixture
def backoff_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Records the download's backoff waits (textclf.data.download._sleep) instead of sleeping."""
    from textclf.data import download as download_module

    waits: list[float] = []
    monkeypatch.setattr(download_module, "_sleep", waits.append)
    return waits


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_archive: tuple[Path, str]):
    """Builds a validated Config: the real conf/ composed with shrink overrides and
    ``extra`` overrides, every path inside tmp_path."""

    def build(*extra: str, model: str = "fasttext") -> Config:
        archive, sha256 = tiny_archive
        paths = [f"paths.{name}={tmp_path / name}" for name in ("raw", "processed", "models", "reports", "cache")]
        cfg = compose([*shrink_overrides(archive, sha256, model), *paths, *extra], root=REPO_ROOT)
        return validate(cfg)

    return build


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first (stage commands call
    `python`), no progress bars, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def assert_same_weights(first: Path, second: Path) -> None:
    """Two checkpoints hold bitwise-equal tensors under the same names."""
    a, b = (torch.load(path, map_location="cpu", weights_only=True)["state_dict"] for path in (first, second))
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert different == [], f"tensors differ: {different}"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serves ``directory`` over HTTP on 127.0.0.1:<a free port>; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(directory)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(tmp_path/www, the base URL serving it on 127.0.0.1)."""
    directory = tmp_path / "www"
    directory.mkdir()
    with serve_directory(directory) as url:
        yield directory, url
