"""Multi-process training: cleaning up after a DDP run, and DDP inside Hydra jobs.

Lightning starts DDP ranks in one of three ways, and the pipeline works under each:
  - itself (`trainer.devices=2`): rank 0 is this process, ranks 1.. are re-runs of this
    command (`_SubprocessScriptLauncher`);
  - torchrun / torchelastic (RANK, LOCAL_RANK, WORLD_SIZE set per process, any number of nodes);
  - SLURM (`srun`: SLURM_PROCID, SLURM_NTASKS, ... per task).
The global rank is only known for certain once the Trainer exists (`trainer.is_global_zero`),
so everything that only rank 0 may do (files, MLflow) happens after the Trainer is built.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch.distributed as dist

# Set in os.environ of rank 0 by Lightning when it starts the other ranks itself.
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def launch_state_restorer() -> Callable[[], None]:
    """Snapshot of the launch state; calling the result restores it after training.

    Lightning's own launcher leaves LOCAL_RANK=0, MASTER_PORT, ... in rank 0's environment and
    its process group initialized. A process that goes on working needs both undone: with
    LOCAL_RANK set, the next Trainer (the next job of an in-process Hydra sweep) believes its
    ranks were started externally and waits forever for them; with the process group alive,
    evaluation (which shards data by the process group) would score half the test split and
    the next job would reuse a group whose other ranks have exited. A group or variables that
    were there before (torchrun, SLURM, a caller's own group) are left as they were.
    """
    saved = {name: os.environ.get(name) for name in LAUNCH_ENV}
    was_initialized = dist.is_available() and dist.is_initialized()

    def restore() -> None:
        if not was_initialized and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    return restore


def _config_location_args(argv: list[str]) -> list[str]:
    """--config-path/--config-name/--config-dir of a Hydra command line (the rest is overrides
    or modes such as -m, which the DDP children of one job must not get)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    options = {"--config-path": args.config_path, "--config-name": args.config_name, "--config-dir": args.config_dir}
    return [f"{option}={value}" for option, value in options.items() if value is not None]


@contextmanager
def ddp_children_rerun_this_job() -> Iterator[None]:
    """Within a Hydra job: DDP ranks that Lightning starts re-run exactly this job, in its directory.

    Lightning starts ranks 1.. of a Hydra app as `python -m <main> <sys.argv[1:]>
    hydra.run.dir=<HydraConfig run.dir> hydra.output_subdir=null`. Under multirun that is
    wrong twice: sys.argv holds `-m` and the whole sweep, so every child would start a sweep
    of its own, and hydra.run.dir is the single-run pattern (outputs/<date>/<time>), not the
    job's directory. While the job runs, sys.argv is therefore this job's own overrides and
    hydra.run.dir its output directory: each child is a plain single run of the same config,
    writing into the same directory (no .hydra/ of its own, only its log file). Both are put
    back when the job ends, so the next job of the sweep starts from the real command line.
    (`strategy=ddp_spawn` would avoid re-running the script, but it pickles the Trainer and
    runs training in a child, so rank 0's MLflow run and epoch history would not come back.)
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    hydra_cfg = HydraConfig.get()
    # hydra.mode=MULTIRUN is how Hydra records -m; a child must be a single run.
    hydra_overrides = [o for o in hydra_cfg.overrides.hydra if not o.startswith("hydra.mode=")]
    argv, run_dir, main_module = sys.argv, hydra_cfg.run.dir, sys.modules["__main__"]
    sys.argv = [argv[0], *_config_location_args(argv[1:]), *hydra_overrides, *hydra_cfg.overrides.task]
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    spec = getattr(main_module, "__spec__", None)
    if spec is not None and spec.name.split(".")[0] != __package__:
        # A pool worker (the joblib launcher's loky processes): Lightning would re-run the
        # pool's own __main__ (`python -m loky...`); name ours instead.
        sys.modules["__main__"] = importlib.import_module(f"{__package__}.__main__")
    try:
        yield
    finally:
        sys.argv = argv
        sys.modules["__main__"] = main_module
        with read_write(hydra_cfg.run):
            hydra_cfg.run.dir = run_dir
