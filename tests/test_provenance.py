"""A tiny training run records where it came from (code, libraries, platform, device) and
logs no secret among its params."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import yaml
from mlflow import MlflowClient

from textclf.redact import MASK
from textclf.stages.download import download
from textclf.stages.preprocess import preprocess
from textclf.stages.train import train


def test_a_training_run_is_tagged_with_its_provenance_and_logs_no_secret(
    tiny_config, mlflow_uri: str, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TEXTCLF_TEST_TOKEN", "tok-0123456789abcdef")
    cfg = tiny_config(
        "trainer.max_epochs=1",
        "tracking.run_name=tok-0123456789abcdef",  # (a URL with credentials is refused: test_credentials.py)
    )
    download(cfg, cfg.paths.raw, progress=False)
    preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
    summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)

    run = MlflowClient(mlflow_uri).get_run(summary.run_id)
    tags = run.data.tags
    assert tags["git_dirty"] in ("true", "false", "unknown")
    assert tags["data_name"] == cfg.data.corpus == "20news-bydate"
    assert "dvc.exp_name" not in tags  # not run by `dvc exp run` (test_dvc_pipeline.py covers that)
    for tag, distribution in {
        "version.torch": "torch",
        "version.lightning": "lightning",
        "version.torchmetrics": "torchmetrics",
        "version.mlflow": "mlflow",
        "version.hydra-core": "hydra-core",
        "version.dvc": "dvc",
        "version.numpy": "numpy",
    }.items():
        assert tags[tag] == metadata.version(distribution)
    assert tags["version.python"] == platform.python_version()
    assert tags["platform"] == platform.platform()
    assert tags["device"] == "cpu"  # trainer=cpu
    assert len(tags["data_hash"]) == 64 and "mlflow.source.git.commit" in tags

    params = run.data.params
    assert params["tracking.run_name"] == MASK
    assert params["optimizer.lr"] == "0.05"  # the rest is logged as is
    logged = repr(params)
    assert "tok-0123456789abcdef" not in logged

    # The resolved config beside the checkpoint, and its copy in the run, are masked alike.
    client = MlflowClient(mlflow_uri)
    artifact = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path)))
    for config in (cfg.paths.models / "config.yaml", artifact):
        text = config.read_text()
        assert "tok-0123456789abcdef" not in text
        values = yaml.safe_load(text)
        assert values["tracking"]["run_name"] == MASK and values["optimizer"]["lr"] == 0.05
