"""Security: checkpoints load weights only, logged params carry no secrets, and a hostile
archive writes nothing anywhere."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
import torch

from textclf.errors import TextclfError
from textclf.stages.evaluate import load_checkpoint
from textclf.stages.preprocess import preprocess
from textclf.tracking import MASK, mask_userinfo, redact_secrets

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
        "data.token_pattern": r"(?u)\b\w\w+\b",  # a token pattern is not a token
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
        "data.token_pattern": r"(?u)\b\w\w+\b",
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
    archive = tmp_path / "raw" / "hostile.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(good) as source, tarfile.open(archive, "w:gz") as tar:
        for info, payload in hostile:  # hostile members first, then a valid corpus
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
        for info in source.getmembers():
            tar.addfile(info, source.extractfile(info))
    before = _snapshot(tmp_path)
    with pytest.raises(TextclfError, match="refusing member") as error:
        preprocess(cfg.data, archive, cfg.paths.processed)
    assert "\n" not in str(error.value)
    assert _snapshot(tmp_path) == before  # not a file added or changed under tmp_path
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_bytes() == b"untouched"
    assert not Path("/outside/pwned").exists()
