"""`python -m textclf`: the whole pipeline for one Hydra config, or a sweep of them.

    python -m textclf                                   # one run, outputs in outputs/<date>/
    python -m textclf -m model=fasttext,lstm optimizer.lr=1e-3,3e-4   # 4 jobs, 4 MLflow runs
    python -m textclf --help                            # config groups and options

Composes conf/ of the current directory (override with --config-dir). Each job gets its
own output directory and MLflow run; jobs share downloads and preprocessed data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from textclf.config import validate
from textclf.errors import TextclfError
from textclf.params import CONFIG_NAME, conf_dir


def run(cfg: DictConfig) -> float:
    """One Hydra job; returns the best validation macro-F1 (what a sweeper maximizes)."""
    from textclf.distributed import ddp_children_rerun_this_job
    from textclf.pipeline import run_pipeline

    hydra_cfg = HydraConfig.get()
    config = validate(cfg, source="config")
    # Tags that tie the MLflow run to its Hydra job (the overrides tell sweep jobs apart).
    tags = {"hydra.overrides": hydra_cfg.job.override_dirname, "hydra.output_dir": hydra_cfg.runtime.output_dir}
    if hydra_cfg.mode.name == "MULTIRUN":
        tags["hydra.job.num"] = str(hydra_cfg.job.num)
    # With trainer.devices > 1, Lightning re-runs this command for the other DDP ranks: make
    # that re-run this one job (not the whole sweep) in this job's directory.
    with ddp_children_rerun_this_job():
        summary = run_pipeline(config, Path(hydra_cfg.runtime.output_dir), tags=tags)
    if summary:
        print(f"textclf: {summary}")
    return float(summary.get("best_val_f1_macro", 0.0))


def main() -> None:
    app = hydra.main(config_path=str(conf_dir()), config_name=CONFIG_NAME, version_base=None)(run)
    try:
        app()
    except TextclfError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
