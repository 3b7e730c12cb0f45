"""The scale benchmark: preprocess and one training epoch on corpora far larger than 20 Newsgroups.

    python -m benchmarks.scale --archive PATH --sha256 HASH [--sizes 100000,1000000]
                               [--work DIR] [--results DIR]

The corpus: the 20 Newsgroups training texts repeated (cyclically, with their labels) into one
Parquet file of N rows, read through the table source (``data=table``) exactly as a user's
file would be; the test split is held out by preprocess (data.test_fraction). For each N it
measures the download and preprocess stages as `dvc repro` runs them (their main() in a
fresh process: wall time and peak RSS, the stage's worker process included); for the largest
N, one epoch of the default fasttext model through the train stage (time and peak RSS).
Writes scale.json and scale.md into --results (benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.run import RESULTS, ROOT, write_params

# Runs one module as `python -m` does, then prints its peak RSS (its own and its children's,
# such as preprocess's forked tokenizer) in MiB.
MEASURED = (
    "import resource, runpy, sys\n"
    "module = sys.argv.pop(1)\n"
    "try:\n"
    "    runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    "    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))\n"
    "    print(f'PEAK_RSS_MIB {peak / 1024:.1f}', file=sys.stderr)\n"
)


def training_texts(archive: Path, sha256: str, work: Path) -> tuple[list[str], list[str]]:
    from textclf.config import validate
    from textclf.data.sources.base import build_source
    from textclf.params import compose
    from textclf.stages.download import download

    cfg = validate(
        compose(
            [
                f"data.url={archive}",
                f"data.sha256={sha256}",
                f"paths.raw={work / 'raw'}",
                f"paths.cache={work / 'cache'}",
            ],
            root=ROOT,
        )
    )
    download(cfg, cfg.paths.raw, progress=False)
    texts, labels = [], []
    for example in build_source(cfg).read(cfg.paths.raw):
        if example.split == "train":
            texts.append(example.text)
            labels.append(example.label)
    return texts, labels


def write_corpus(path: Path, texts: list[str], labels: list[str], rows: int, batch: int = 50_000) -> None:
    """``rows`` rows of (text, label): the texts repeated in order, written in row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("text", pa.string()), ("label", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, batch):
            index = [i % len(texts) for i in range(start, min(start + batch, rows))]
            writer.write_table(
                pa.table({"text": [texts[i] for i in index], "label": [labels[i] for i in index]}, schema=schema)
            )


def run_stage(module: str, params: Path) -> dict[str, float]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", MEASURED, module, "--params", str(params)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seconds = time.perf_counter() - started
    peaks = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("PEAK_RSS_MIB ")]
    if result.returncode != 0 or not peaks:
        raise SystemExit(f"{module} failed:\n{result.stderr[-3000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_mib": float(peaks[-1])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", required=True, type=Path, help="20news-bydate.tar.gz")
    parser.add_argument("--sha256", required=True)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work-scale")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    texts, labels = training_texts(args.archive.resolve(), args.sha256, work)
    sizes = [int(size) for size in args.sizes.split(",")]
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpu_cores": os.cpu_count(), "rows": {}}
    for size in sizes:
        corpus = work / f"corpus-{size}.parquet"
        if not corpus.is_file():
            write_corpus(corpus, texts, labels, size)
        run = work / str(size)
        params = run / "params.yaml"
        run.mkdir(exist_ok=True)
        paths = [f"paths.{name}={run / name}" for name in ("raw", "processed", "models", "reports", "cache")]
        write_params(
            params,
            ["data=table", f"data.train={corpus}", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", *paths],
        )
        print(f"{size} documents: download, preprocess", flush=True)
        row: dict[str, Any] = {"download": run_stage("textclf.stages.download", params)}
        row["preprocess"] = run_stage("textclf.stages.preprocess", params)
        manifest = json.loads((run / "processed" / "manifest.json").read_text(encoding="utf-8"))
        row["counts"] = manifest["counts"]
        if size == max(sizes):
            print(f"{size} documents: one fasttext epoch", flush=True)
            row["train_one_epoch"] = run_stage("textclf.stages.train", params)
        results["rows"][str(size)] = row
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "scale.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    lines = [
        "| documents | preprocess (s) | preprocess peak RSS (MiB) | one fasttext epoch (s) | its peak RSS (MiB) |",
        "|---|---|---|---|---|",
    ]
    for size, row in results["rows"].items():
        epoch = row.get("train_one_epoch", {})
        lines.append(
            f"| {int(size):,} | {row['preprocess']['seconds']} | {row['preprocess']['peak_rss_mib']:.0f} | "
            f"{epoch.get('seconds', '-')} | {epoch.get('peak_rss_mib', '-')} |"
        )
    (args.results / "scale.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
