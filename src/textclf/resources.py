"""What a config asks of this machine, checked before any work: the devices trainer.* names
exist, and the model's parameters and optimizer state fit in memory.

Lightning would find a missing GPU only once the data and the model are built, and a table
too large for memory fails (or is OOM-killed without a word) when it is allocated or at the
first optimizer step; here each is one line naming the key to change.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from textclf.config import TrainerConfig
from textclf.errors import TextclfError

GIB = 1024**3
# Float copies of every parameter that training holds at least: the weights and the
# optimizer's state (Adam's and AdamW's two moments, SGD's momentum buffer). Gradients come on
# top (sparse ones are small), as do activations: the estimate is a lower bound.
STATE_COPIES = {"torch.optim.Adam": 3, "torch.optim.AdamW": 3, "torch.optim.SGD": 2}
# Model keys that size the parameters, named in the message when the config has them.
SIZE_KEYS = ("embed_dim", "ngram_buckets", "hidden_dim", "ff_dim", "num_layers")


def check_devices(trainer: TrainerConfig) -> None:
    """trainer.accelerator and trainer.devices name devices this machine has."""
    import torch

    accelerator, devices = trainer.accelerator, trainer.devices
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            build = " (this torch is a CPU-only build)" if torch.version.cuda is None else ""
            raise TextclfError(
                f"trainer.accelerator={accelerator}: no CUDA GPU is visible here{build}; "
                "use trainer=cpu (trainer.accelerator=cpu)"
            )
        count = torch.cuda.device_count()
        wanted = (
            devices
            if isinstance(devices, int) and devices > 0
            else (max(devices) + 1 if isinstance(devices, list) and devices else 0)
        )
        if wanted > count:
            raise TextclfError(
                f"trainer.devices={devices}: {count} GPU{'s' if count != 1 else ''} visible here; "
                "lower trainer.devices (-1: all of them)"
            )
    elif accelerator == "mps" and not torch.backends.mps.is_available():
        raise TextclfError("trainer.accelerator=mps: MPS is not available here; use trainer.accelerator=cpu")


def available_memory() -> int | None:
    """Bytes of memory this process can still get: the system's available memory (page cache
    counts as free), capped by a cgroup (container) limit; None where neither can be read."""
    available: int | None = None
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
        except OSError:
            pass
        if available is None and hasattr(os, "sysconf"):
            try:
                available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError):
                pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit():
            left = max(0, int(limit) - int(usage))
            available = left if available is None else min(available, left)
        break
    return available


def parameter_bytes(model: Mapping[str, Any], vocab_size: int, num_classes: int) -> tuple[int, int]:
    """(parameters, bytes of parameters and buffers) of the backbone ``model`` builds, counted
    on PyTorch's meta device: nothing is allocated and no random number is drawn."""
    import torch
    from hydra.utils import instantiate

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        backbone = instantiate(dict(model), vocab_size=vocab_size, num_classes=num_classes)
    count = sum(p.numel() for p in backbone.parameters())
    size = sum(t.numel() * t.element_size() for t in (*backbone.parameters(), *backbone.buffers()))
    return count, size


def check_memory(resolved: Mapping[str, Any], vocab_size: int, num_classes: int, available: int | None = None) -> None:
    """Refuses a model whose weights and optimizer state alone exceed the memory available
    (``available`` bytes, default: ``available_memory()``), naming the estimate and the keys
    that size it. Each CPU DDP process holds a copy; on a GPU, host memory holds the weights
    once (they are built there first)."""
    available = available_memory() if available is None else available
    if available is None:
        return
    model, trainer = resolved["model"], resolved["trainer"]
    count, size = parameter_bytes(model, vocab_size, num_classes)
    on_gpu = trainer.get("accelerator") in ("gpu", "cuda")
    devices = trainer.get("devices")
    processes = devices if not on_gpu and isinstance(devices, int) and devices > 1 else 1
    copies = 1 if on_gpu else STATE_COPIES.get(resolved["optimizer"].get("_target_"), 1)
    needed = size * copies * processes
    if needed <= available:
        return
    keys = [f"model.{key}={model[key]}" for key in SIZE_KEYS if key in model]
    what = "weights" if copies == 1 else "weights and optimizer state"
    per = f" in each of {processes} processes" if processes > 1 else ""
    raise TextclfError(
        f"the model needs at least {needed / GIB:.1f} GiB for its {count:,} parameters ({what}{per}, "
        f"vocabulary {vocab_size:,}) but {available / GIB:.1f} GiB of memory is available; "
        f"lower {', '.join(keys) or 'the model size'} (or encoder.max_vocab)"
    )
