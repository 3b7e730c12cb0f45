"""`python -m textclf`: the whole pipeline for one Hydra config, or a sweep of them.

    python -m textclf                                   # one run, outputs in outputs/<date>/<time>-<id>/
    python -m textclf -m model=fasttext,lstm optimizer.lr=1e-3,3e-4   # 4 jobs, 4 MLflow runs
    python -m textclf --help                            # config groups and options

Composes conf/ of the current directory (override with --config-dir). Each job gets its
own output directory and MLflow run; jobs share downloads and preprocessed data.

A sweep resumes: a job whose config and data already have a FINISHED MLflow run (same
fingerprint, see textclf.pipeline) is skipped, so rerunning an interrupted sweep trains only
the jobs that are missing. TEXTCLF_FORCE=1 trains every job again. A single run (no -m)
always trains.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from textclf.atomic import write_json
from textclf.config import credential_problems, validate
from textclf.errors import TextclfError, run_cli
from textclf.logs import hand_lightning_to_root
from textclf.params import CONFIG_NAME, conf_dir

JOB_FILE = "job.json"  # in each job's output directory: run_pipeline's summary (its MLflow run id)
FORCE_ENV = "TEXTCLF_FORCE"  # "1": sweeps train jobs that already have a finished run

# ${textclf.unique:} in hydra.run.dir / hydra.sweep.dir (conf/config.yaml): "<pid>-<6 hex>",
# one value per process, so two runs started in the same second never share a directory.
# Cached like Hydra's ${now:}: the value resolved once is the one the config keeps, and Hydra
# copies the cache into each sweep job's config (joblib workers included). A DDP child gets
# its parent job's directory as a plain hydra.run.dir override, so it never resolves its own.
UNIQUE_ID = f"{os.getpid()}-{secrets.token_hex(3)}"
OmegaConf.register_new_resolver("textclf.unique", lambda: UNIQUE_ID, use_cache=True, replace=True)


def forced() -> bool:
    value = os.environ.get(FORCE_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise TextclfError(f"{FORCE_ENV}={value!r}: expected 1 or 0 (true/false)")


def run(cfg: DictConfig) -> float:
    """One Hydra job; returns the best value of train.monitor (what a sweeper optimizes: its
    direction must be the monitor's mode, e.g. maximize for val/f1_macro)."""
    from textclf.distributed import ddp_children_rerun_this_job
    from textclf.pipeline import run_pipeline
    from textclf.redact import redact_secrets

    hand_lightning_to_root()  # Hydra's handlers now hold the root logger
    hydra_cfg = HydraConfig.get()
    config = validate(cfg, source="config")
    # Tags that tie the MLflow run to its Hydra job (the overrides tell sweep jobs apart).
    # Masked like the params (values of secret environment variables, URL userinfo).
    tags = {"hydra.overrides": hydra_cfg.job.override_dirname, "hydra.output_dir": hydra_cfg.runtime.output_dir}
    sweep = hydra_cfg.mode.name == "MULTIRUN"
    if sweep:
        tags["hydra.job.num"] = str(hydra_cfg.job.num)
    tags = {key: str(value) for key, value in redact_secrets(tags).items()}
    # With trainer.devices > 1, Lightning re-runs this command for the other DDP ranks: make
    # that re-run this one job (not the whole sweep) in this job's directory.
    with ddp_children_rerun_this_job():
        summary = run_pipeline(
            config, Path(hydra_cfg.runtime.output_dir), tags=tags, skip_finished=sweep and not forced()
        )
    if summary.get("skipped"):
        print(
            f"textclf: skipped job {hydra_cfg.job.num} ({hydra_cfg.job.override_dirname}): "
            f"finished before as MLflow run {summary['run_id']} ({FORCE_ENV}=1 trains it again)"
        )
    elif summary:
        print(f"textclf: {summary}")
    if summary:  # rank 0: the job's MLflow run, for what reads the sweep (textclf.ensemble.EnsembleCallback)
        write_json(Path(hydra_cfg.runtime.output_dir) / JOB_FILE, summary)
    return float(summary.get("best_score", 0.0))


def refuse_credentials(arguments: list[str]) -> None:
    """Hydra writes the overrides into the job's .hydra/ directory before the job validates its
    config, so an override with credentials in a URL is refused here, before anything is written."""
    problems = []
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if equals:
            problems += credential_problems(value, prefix=key.lstrip("+~") + ".")
        else:
            problems += credential_problems(argument, prefix="argument.")
    if problems:
        raise TextclfError("invalid overrides: " + "; ".join(problems))


def main() -> None:
    app = hydra.main(config_path=str(conf_dir()), config_name=CONFIG_NAME, version_base=None)(run)
    # Hydra prints its own multi-line report (and a traceback) for any error unless this is
    # set; set, errors come back here: a bad input is one line, a bug keeps its traceback.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")

    def command() -> None:
        refuse_credentials(sys.argv[1:])
        app()

    run_cli(None, command, hydra=True)


if __name__ == "__main__":
    main()
