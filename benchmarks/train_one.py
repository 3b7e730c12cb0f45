"""One measurement in a fresh process (so peak RSS belongs to it alone); prints one JSON line.

    python -m benchmarks.train_one pipeline --params P.yaml [--per-epoch-test]
    python -m benchmarks.train_one stage --params P.yaml
    python -m benchmarks.train_one bare --params P.yaml

pipeline: train (with the per-epoch test probe if asked), then evaluate, for the model rows; stage: the
train stage as `dvc repro` runs it (its main(): params.yaml in, models/ out, nothing shipped:
evaluate logs the model), timed from after its imports, as the bare loop is.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from textclf.config import load_params
from textclf.data.encoded import EncodedSplit

THRESHOLDS = (0.80, 0.84, 0.86, 0.88)
# reports/metrics.json's calibration figures (textclf.calibration), copied into the result.
CALIBRATION_KEYS = ("ece_uncalibrated", "ece_calibrated", "temperature", "loss", "loss_calibrated")


class TestAccuracyPerEpoch(pl.Callback):
    """Benchmark-only: scores the test split after every epoch to time reaching each accuracy.

    Its own time is excluded from the training clock it reports."""

    def __init__(self, test: EncodedSplit, batch_size: int, max_len: int | None) -> None:
        from textclf.data.datamodule import BatchedSplit

        self.test = BatchedSplit(test, max_len)
        self.batch_size = batch_size
        self.clock = 0.0
        self.started = 0.0
        self.curve: list[tuple[float, float]] = []  # (training seconds so far, test accuracy)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.clock += time.perf_counter() - self.started
        correct = 0
        pl_module.eval()
        with torch.inference_mode():
            for start in range(0, len(self.test), self.batch_size):
                batch = self.test[list(range(start, min(start + self.batch_size, len(self.test))))]
                predicted = pl_module(batch).argmax(1)
                correct += int((predicted == batch["labels"]).sum())
        pl_module.train()
        self.curve.append((round(self.clock, 2), correct / len(self.test)))

    def time_to(self, threshold: float) -> float | None:
        return next((seconds for seconds, accuracy in self.curve if accuracy >= threshold), None)


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux's VmHWM belongs to the address space exec made; getrusage's
    ru_maxrss survives exec, so it would report the launching benchmark's peak when that was higher."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, the fallback
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # "VmHWM:  123456 kB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("pipeline", "stage", "bare"))
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--per-epoch-test", action="store_true")
    args = parser.parse_args()
    cfg = load_params(args.params)
    result: dict = {"mode": args.mode}
    if args.mode == "bare":
        from benchmarks.bare_loop import bare_train

        result.update(bare_train(cfg, cfg.paths.processed))
    elif args.mode == "stage":
        from textclf.stages import train as train_stage

        started = time.perf_counter()
        train_stage.main(["--params", str(args.params)])
        result["seconds"] = time.perf_counter() - started
    else:
        from textclf.data.datamodule import tokens_kept
        from textclf.stages.evaluate import evaluate
        from textclf.stages.train import train

        callbacks = []
        if args.per_epoch_test:
            test = EncodedSplit.load(cfg.paths.processed / "test.pt")
            probe = TestAccuracyPerEpoch(test, cfg.train.eval_batch_size, tokens_kept(cfg.model))
            callbacks.append(probe)
        started = time.perf_counter()
        summary = train(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports, callbacks=callbacks)
        seconds = time.perf_counter() - started
        train_docs = len(EncodedSplit.load(cfg.paths.processed / "train.pt"))
        result.update(seconds=seconds, epochs=summary.epochs, best_score=summary.best_score, run_id=summary.run_id)
        # Without the probe, training time is the whole train() call (its per-epoch validation included).
        clock = probe.clock if args.per_epoch_test else seconds
        result["train_seconds"] = clock
        result["samples_per_second"] = train_docs * summary.epochs / clock
        if args.per_epoch_test:
            result["test_curve"] = probe.curve
            result["time_to"] = {f"{int(t * 100)}%": probe.time_to(t) for t in THRESHOLDS}
        metrics = evaluate(cfg, cfg.paths.processed, cfg.paths.models, cfg.paths.reports)
        result.update(test_accuracy=metrics["accuracy"], test_f1_macro=metrics["f1_macro"])
        result.update({key: metrics.get(key) for key in CALIBRATION_KEYS})
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
