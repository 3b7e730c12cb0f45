"""$TEXTCLF_DATA_HOME: a local copy of the pinned corpus is taken before any download, offline.

The URL in these configs is under the reserved .invalid TLD: it never resolves, so anything
that works here worked without the network.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from textclf.data.archive import content_sha256
from textclf.data.sources.base import RECORD_FILE
from textclf.errors import TextclfError
from textclf.hashing import file_sha256
from textclf.stages.download import download
from textclf.stages.preprocess import preprocess

from conftest import build_archive

UNREACHABLE = "http://corpus.invalid/20news-bydate.tar.gz"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "data-home"
    directory.mkdir()
    monkeypatch.setenv("TEXTCLF_DATA_HOME", str(directory))
    return directory


def offline_config(tiny_config, tiny_archive, *extra: str):
    """The tiny corpus pinned by both hashes, behind a URL that cannot be reached."""
    archive, _ = tiny_archive
    return tiny_config(
        f"data.url={UNREACHABLE}", "data.mirrors=[]", f"data.content_sha256={content_sha256(archive)}", *extra
    )


def repack(source: Path, target: Path) -> Path:
    """The same files in another order, with directories, other mtimes and owners, xz."""
    with tarfile.open(source) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]
    with tarfile.open(target, "w:xz") as out:
        for split in sorted({m.name.split("/")[0] for m, _ in members}):
            info = tarfile.TarInfo(f"./{split}")
            info.type, info.mtime = tarfile.DIRTYPE, 1234567890
            out.addfile(info)
        for member, payload in reversed(members):
            info = tarfile.TarInfo(f"./{member.name}")
            info.size, info.mtime, info.uid, info.uname = len(payload), 1234567890, 1000, "someone"
            out.addfile(info, io.BytesIO(payload))
    return target


def unpack(source: Path, target: Path) -> Path:
    with tarfile.open(source) as tar:
        tar.extractall(target, filter="data")
    return target


def processed_files(cfg, raw: Path, out: Path) -> dict[str, bytes]:
    preprocess(cfg, raw, out, parallel=False)
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


def processed_from_the_original(
    cfg, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, bytes]:
    """What the same config preprocesses to when the data home holds the original archive."""
    original_home = tmp_path / "original-home"
    original_home.mkdir()
    shutil.copyfile(archive, original_home / archive.name)
    monkeypatch.setenv("TEXTCLF_DATA_HOME", str(original_home))
    download(cfg, tmp_path / "original-raw", progress=False)
    return processed_files(cfg, tmp_path / "original-raw", tmp_path / "from-original")


def test_the_pinned_archive_in_the_data_home_is_taken_without_the_network(
    tiny_config, tiny_archive, home: Path, backoff_waits: list[float]
) -> None:
    archive, sha256 = tiny_archive
    shutil.copyfile(archive, home / archive.name)
    cfg = offline_config(tiny_config, tiny_archive)
    record = download(cfg, cfg.paths.raw, progress=False)
    path = cfg.paths.raw / cfg.data.archive_name
    assert file_sha256(path) == sha256 and backoff_waits == []
    assert sorted(p.name for p in cfg.paths.raw.iterdir()) == sorted([cfg.data.archive_name, RECORD_FILE])
    assert record.content_sha256 == content_sha256(archive)


def test_a_repack_of_the_corpus_is_taken_by_its_content_hash_and_preprocesses_to_the_same_bytes(
    tiny_config, tiny_archive, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, sha256 = tiny_archive
    repacked = repack(archive, home / archive.name)
    assert file_sha256(repacked) != sha256 and content_sha256(repacked) == content_sha256(archive)
    cfg = offline_config(tiny_config, tiny_archive)
    record = download(cfg, cfg.paths.raw, progress=False)
    assert (cfg.paths.raw / cfg.data.archive_name).read_bytes() == repacked.read_bytes()
    assert record.content_sha256 == content_sha256(archive)
    from_repack = processed_files(cfg, cfg.paths.raw, tmp_path / "from-repack")
    # Every file, manifest.json included: DVC sees the same data/processed, so train never reruns.
    assert from_repack == processed_from_the_original(cfg, archive, tmp_path, monkeypatch)


def test_an_unpacked_copy_is_packed_deterministically_and_preprocesses_to_the_same_bytes(
    tiny_config, tiny_archive, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, _ = tiny_archive
    unpack(archive, home / "20news-bydate")
    cfg = offline_config(tiny_config, tiny_archive)
    name = cfg.data.archive_name
    download(cfg, tmp_path / "first", progress=False)
    download(cfg, tmp_path / "second", progress=False)
    first, second = tmp_path / "first" / name, tmp_path / "second" / name
    assert first.read_bytes() == second.read_bytes()
    assert content_sha256(first) == content_sha256(archive)
    from_directory = processed_files(cfg, tmp_path / "first", tmp_path / "from-directory")
    assert from_directory == processed_from_the_original(cfg, archive, tmp_path, monkeypatch)


@pytest.mark.parametrize("unpacked", [False, True], ids=["archive", "unpacked"])
def test_a_different_corpus_in_the_data_home_is_refused_naming_both_hashes(
    tiny_config, tiny_archive, home: Path, tmp_path: Path, unpacked: bool
) -> None:
    other = tmp_path / "other.tar.gz"
    other_sha256 = build_archive(other, seed=1)  # same layout, other messages
    if unpacked:
        unpack(other, home / "20news-bydate")
    else:
        shutil.copyfile(other, home / "20news-bydate.tar.gz")
    cfg = offline_config(tiny_config, tiny_archive)
    with pytest.raises(TextclfError) as caught:
        download(cfg, cfg.paths.raw, progress=False)
    message = str(caught.value)
    assert "\n" not in message and "not the pinned corpus" in message
    assert cfg.data.sha256 in message and cfg.data.content_sha256 in message
    assert content_sha256(other) in message and (unpacked or other_sha256 in message)
    assert not cfg.paths.raw.exists()


def test_a_link_in_an_unpacked_copy_is_refused(tiny_config, tiny_archive, home: Path) -> None:
    archive, _ = tiny_archive
    unpacked = unpack(archive, home / "20news-bydate")
    (unpacked / "20news-bydate-train" / "rec.boats" / "9999").symlink_to("/etc/hostname")
    cfg = offline_config(tiny_config, tiny_archive)
    with pytest.raises(TextclfError, match="links are not allowed"):
        download(cfg, cfg.paths.raw, progress=False)
    assert not cfg.paths.raw.exists()


@pytest.mark.parametrize("home_set", [False, True], ids=["no-data-home", "empty-data-home"])
def test_an_unresolvable_host_is_tried_once_and_the_error_says_how_to_use_a_local_copy(
    tiny_config,
    tiny_archive,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backoff_waits: list[float],
    home_set: bool,
) -> None:
    if home_set:
        monkeypatch.setenv("TEXTCLF_DATA_HOME", str(tmp_path))
    cfg = offline_config(tiny_config, tiny_archive)
    with pytest.raises(TextclfError) as caught:
        download(cfg, cfg.paths.raw, progress=False)
    message = str(caught.value)
    assert backoff_waits == []  # a DNS failure is not retried
    assert "corpus.invalid" in message and "TEXTCLF_DATA_HOME" in message and "\n" not in message
    assert "attempts" not in message
    if home_set:
        assert f"TEXTCLF_DATA_HOME={tmp_path} holds neither 20news-bydate.tar.gz nor 20news-bydate/" in message


def test_the_content_hash_is_sha256sum_of_the_sorted_files(tiny_archive, tmp_path: Path) -> None:
    """The definition in textclf.data.archive, as the shell computes it in an unpacked copy."""
    archive, _ = tiny_archive
    unpacked = unpack(archive, tmp_path / "unpacked")
    pipeline = "find . -type f -printf '%P\\0' | LC_ALL=C sort -z | xargs -0 sha256sum -z | sha256sum"
    result = subprocess.run(["bash", "-c", pipeline], cwd=unpacked, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"no GNU find/sort/sha256sum here: {result.stderr.strip()}")
    assert result.stdout.split()[0] == content_sha256(archive)


@pytest.mark.slow
def test_dvc_repro_then_exp_run_work_offline_from_the_data_home_with_no_data_overrides(
    tiny_archive, tmp_path: Path
) -> None:
    """conf/ itself pins the tiny corpus behind an unreachable URL (as the real conf/ pins the
    real one), the data home holds a re-pack: `dvc repro` runs every stage, and a `dvc exp run`
    that recomposes params.yaml from conf/ reruns only train and evaluate."""
    from omegaconf import OmegaConf
    from test_dvc_pipeline import STAGES, copy_repository, run, stages_run

    from textclf.params import write_params

    from conftest import shrink_overrides, subprocess_env

    archive, sha256 = tiny_archive
    home = tmp_path / "data-home"
    home.mkdir()
    repack(archive, home / archive.name)
    repo = copy_repository(tmp_path / "repo")
    pinned = [o for o in shrink_overrides(archive, sha256) if "." in o.split("=")[0] and not o.startswith("data.url=")]
    tiny = OmegaConf.from_dotlist(
        [*pinned, f"data.url={UNREACHABLE}", f"data.content_sha256={content_sha256(archive)}"]
    )
    OmegaConf.save(tiny, repo / "conf" / "tiny.yaml")
    config = repo / "conf" / "config.yaml"
    tuned = "  - optional tuned: ${model}_${optimizer}\n"
    assert tuned in config.read_text()
    config.write_text(config.read_text().replace(tuned, tuned + "  - tiny\n"))
    write_params(repo / "params.yaml", [], root=repo)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qam", "tiny"],
        cwd=repo,
        check=True,
    )

    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", TEXTCLF_DATA_HOME=str(home))
    first = run(["dvc", "repro"], repo, env)
    assert stages_run(first) == list(STAGES)
    assert "content sha256 matches data.content_sha256" in first
    manifest = (repo / "data" / "processed" / "manifest.json").read_bytes()
    second = run(["dvc", "exp", "run", "-S", "optimizer.lr=0.02"], repo, env)
    assert stages_run(second) == ["train", "evaluate"]
    assert (repo / "data" / "processed" / "manifest.json").read_bytes() == manifest
