"""The ensemble preset (conf/experiment/best.yaml): `python -m textclf +experiment=best` is a Hydra
sweep with one job per member (conf/member/), each the whole pipeline, and ends by combining the
members' runs into one logged ensemble (textclf.ensemble.EnsembleCallback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hf_models import build_tiny_bert
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from mlflow import MlflowClient
from omegaconf import OmegaConf

from textclf.config import load_params, validate
from textclf.errors import TextclfError
from textclf.params import compose, conf_dir
from textclf.predict import predict

from conftest import REPO_ROOT, subprocess_env

MEMBERS = ["linear", "fasttext_wide", "minilm"]


def test_the_preset_is_a_sweep_of_its_members_ended_by_the_ensemble_callback() -> None:
    with initialize_config_dir(str(conf_dir(REPO_ROOT)), version_base=None):
        cfg = hydra_compose("config", overrides=["+experiment=best"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper.params["+member"].split(",") == MEMBERS
    assert cfg.hydra.callbacks.ensemble._target_ == "textclf.ensemble.EnsembleCallback"


@pytest.mark.parametrize("member", MEMBERS)
def test_each_member_composes_as_the_preset_it_names(member: str) -> None:
    composed = compose(["+experiment=best", f"+member={member}", "ensemble.pretrained=/models/minilm"], root=REPO_ROOT)
    cfg = validate(composed)
    assert cfg.ensemble is not None and cfg.ensemble.pretrained == "/models/minilm"
    if member == "minilm":  # the preset's model, at the preset's length and epochs
        alone = compose(["+experiment=minilm", "model.name=/models/minilm"], root=REPO_ROOT)
        assert cfg.model["name"] == "/models/minilm" and cfg.model["max_len"] == 128
        assert cfg.trainer.max_epochs == 2 and cfg.optimizer.lr == alone.optimizer.lr
    else:  # exactly the member's own preset, and the preset's ensemble section
        own = OmegaConf.to_container(composed)
        own.pop("ensemble")
        assert own == OmegaConf.to_container(compose([f"+experiment={member}"], root=REPO_ROOT))


def test_dvc_stages_refuse_params_composed_with_the_ensemble_preset(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    composed = compose(["+experiment=best", "+member=linear"], root=REPO_ROOT)
    params.write_text(yaml.safe_dump(OmegaConf.to_container(composed)), encoding="utf-8")
    with pytest.raises(TextclfError, match=r"python -m textclf \+experiment=best"):
        load_params(params)


def run_preset(cwd: Path, env: dict[str, str], *overrides: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "textclf", "+experiment=best", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_the_preset_trains_its_members_and_logs_their_ensemble(
    tiny_archive, hf_home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, sha256 = tiny_archive
    bert = build_tiny_bert(tmp_path / "bert", max_positions=128)  # the member reads 128 tokens
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "conf").symlink_to(REPO_ROOT / "conf")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = subprocess_env(MLFLOW_TRACKING_URI=uri)
    overrides = [
        "+member=linear,minilm",  # a choice of members on the command line beats the preset's
        f"ensemble.pretrained={bert}",
        f"data.url={archive}",
        f"data.sha256={sha256}",
        "data.mirrors=[]",
        "data.val_fraction=0.25",
        "trainer.enable_progress_bar=false",
        "train.batch_size=8",
        "train.eval_batch_size=16",
        "hydra.sweep.dir=sweep",
    ]
    first = run_preset(cwd, env, *overrides)
    summary = json.loads((cwd / "sweep" / "ensemble.json").read_text(encoding="utf-8"))
    client = MlflowClient(uri)
    member_runs = [client.get_run(member["run_id"]) for member in summary["members"]]
    assert [run.data.tags["model"] for run in member_runs] == ["LinearClassifier", "HuggingFaceClassifier"]
    assert all(run.info.status == "FINISHED" for run in member_runs)
    assert member_runs[1].data.params["model.name"] == str(bert)
    assert abs(sum(member["weight"] for member in summary["members"]) - 1) < 1e-6
    # The ensemble is never worse on validation than its best member (it is a candidate).
    assert summary["val"]["loss"] <= min(member["val"]["loss"] for member in summary["members"]) + 1e-9
    assert f"ensemble: {summary['model_uri']}" in first.stdout

    ensemble_run = client.get_run(summary["run_id"])
    assert ensemble_run.info.experiment_id == member_runs[0].info.experiment_id
    monkeypatch.chdir(cwd)  # where the runs were made (the store's default artifact root is relative)
    frame = predict(summary["model_uri"], ["space shuttle orbit launch", "hockey goal season"], uri)
    probabilities = frame.drop(columns=["label", "probability"]).to_numpy(dtype=float)
    assert probabilities.shape[0] == 2 and abs(probabilities.sum(axis=1) - 1).max() < 1e-5

    # A rerun trains nothing (both members have finished runs) and combines the same runs again.
    second = run_preset(cwd, env, *overrides)
    assert second.stdout.count("textclf: skipped job") == 2
    again = json.loads((cwd / "sweep" / "ensemble.json").read_text(encoding="utf-8"))
    assert [m["run_id"] for m in again["members"]] == [m["run_id"] for m in summary["members"]]
    assert [m["weight"] for m in again["members"]] == [m["weight"] for m in summary["members"]]
    assert again["run_id"] != summary["run_id"]
