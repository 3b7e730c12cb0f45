"""The benchmark: textclf against what a user would pick instead, side by side, in one run.

    python -m benchmarks.run --archive PATH --sha256 HASH [--models fasttext,lstm,transformer,fasttext_wide]
                             [--repeats 7] [--skip-dvc] [--results DIR] [--no-readme]

Measures on the full corpus, on this machine, in this one run:
  * each model preset: test accuracy / macro-F1, training wall time, time to 80/84/86/88% test
    accuracy (scored after every epoch), peak RSS, training samples/s (one subprocess each);
  * scikit-learn TF-IDF + LinearSVC on the same split (what a user would write instead);
  * the train stage as shipped (its main(), as `dvc repro` runs it) vs a bare PyTorch loop on
    the same fasttext config (framework overhead);
  * the preprocess stage vs CountVectorizer().fit_transform + transform on the same texts;
  * `dvc repro` when nothing changed.
Timings are medians over --repeats runs where cheap. Writes latest.json and latest.md into
--results (benchmarks/results/), and the table into README.md between the benchmark markers
unless --no-readme.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from textclf.config import validate
from textclf.params import compose
from textclf.params import write_params as compose_params
from textclf.stages.download import download
from textclf.stages.preprocess import preprocess

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Model presets: the default config (fasttext) and conf/experiment/<name>.yaml.
PRESETS = {
    "fasttext": [],
    "lstm": ["+experiment=lstm"],
    "transformer": ["+experiment=transformer"],
    "linear": ["+experiment=linear"],
    # conf/experiment/best.yaml is an ensemble preset (a sweep of members): benchmarks/accuracy.py runs it.
    "fasttext_wide": ["+experiment=fasttext_wide"],
}
README_START, README_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"


@dataclass(frozen=True)
class Target:
    """One line of issue 3's targets: a figure of the results, its target and its floor (the
    least that counts as done), compared with ``higher`` (at least) or ``lower`` (at most)."""

    name: str
    figure: Callable[[dict[str, Any]], float | None]  # None: not measured in this run
    target: float
    floor: float | None
    better: str  # "higher" or "lower"
    shown: Callable[[float], str]

    def verdict(self, value: float) -> str:
        def reaches(bound: float) -> bool:
            return value >= bound if self.better == "higher" else value <= bound

        if reaches(self.target):
            return "met"
        if self.floor is not None and reaches(self.floor):
            return "floor met, target not"
        return "**not met**"


def _model(name: str, key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda results: results["models"].get(name, {}).get(key)


def _percent(value: float) -> str:
    return f"{value:.1%}"


TARGETS = (
    Target("`fasttext` test accuracy", _model("fasttext", "test_accuracy"), 0.86, 0.85, "higher", _percent),
    Target("`fasttext` training time", _model("fasttext", "train_seconds"), 30, None, "lower", lambda v: f"{v:.0f} s"),
    Target("`lstm` test accuracy", _model("lstm", "test_accuracy"), 0.84, 0.80, "higher", _percent),
    Target("`transformer` test accuracy", _model("transformer", "test_accuracy"), 0.84, 0.80, "higher", _percent),
    Target("`fasttext_wide` test accuracy", _model("fasttext_wide", "test_accuracy"), 0.88, None, "higher", _percent),
    Target("train stage / bare loop", lambda r: r["overhead"]["ratio"], 1.05, 1.15, "lower", lambda v: f"{v:.2f}×"),
    Target(
        "preprocess / CountVectorizer", lambda r: r["preprocess"]["ratio"], 1.0, None, "lower", lambda v: f"{v:.2f}×"
    ),
    Target("`fasttext` peak RSS", _model("fasttext", "peak_rss_mb"), 1536, None, "lower", lambda v: f"{v:.0f} MB"),
    Target(
        "no-op `dvc repro`",
        lambda r: r.get("dvc", {}).get("dvc_repro_noop_seconds"),
        3,
        5,
        "lower",
        lambda v: f"{v:.2f} s",
    ),
)


def render_targets(results: dict[str, Any]) -> list[str]:
    """The results against issue 3's targets and floors, one row per target."""
    lines = ["| target (issue 3) | target | floor | measured | |", "|---|---|---|---|---|"]
    for target in TARGETS:
        value = target.figure(results)
        bound = "≥" if target.better == "higher" else "≤"
        floor = "" if target.floor is None else f"{bound} {target.shown(target.floor)}"
        measured, verdict = ("not measured", "") if value is None else (target.shown(value), target.verdict(value))
        lines.append(f"| {target.name} | {bound} {target.shown(target.target)} | {floor} | {measured} | {verdict} |")
    return lines


def median_time(function: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def write_params(path: Path, overrides: list[str]) -> None:
    cfg = compose(overrides, root=ROOT)
    path.write_text(yaml.safe_dump(OmegaConf.to_container(cfg), sort_keys=False), encoding="utf-8")


def run_worker(mode: str, params: Path, *extra: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_one", mode, "--params", str(params), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"benchmark worker failed ({mode} {params}):\n{result.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def texts_and_labels(cfg) -> tuple[list[str], list[str], list[str], list[str]]:
    from textclf.data.sources.base import build_source
    from textclf.encoders.text import clean

    split: dict[str, tuple[list[str], list[str]]] = {"train": ([], []), "test": ([], [])}
    for example in build_source(cfg).read(cfg.paths.raw):  # the same texts preprocess reads
        texts, labels = split[example.split]
        texts.append(clean(example.text, cfg.encoder["remove"]))
        labels.append(example.label)
    (train_x, train_y), (test_x, test_y) = split["train"], split["test"]
    return train_x, train_y, test_x, test_y


def sklearn_baselines(cfg, repeats: int) -> dict[str, Any]:
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.svm import LinearSVC

    train_x, train_y, test_x, test_y = texts_and_labels(cfg)

    def count_vectorize() -> None:
        vectorizer = CountVectorizer()
        vectorizer.fit_transform(train_x)
        vectorizer.transform(test_x)

    outcome: dict[str, Any] = {}

    def tfidf_svm() -> None:
        vectorizer = TfidfVectorizer()
        classifier = LinearSVC().fit(vectorizer.fit_transform(train_x), train_y)
        predicted = classifier.predict(vectorizer.transform(test_x))
        outcome["accuracy"] = accuracy_score(test_y, predicted)
        outcome["f1_macro"] = f1_score(test_y, predicted, average="macro")

    return {
        "countvectorizer_seconds": median_time(count_vectorize, repeats),
        "tfidf_svm_seconds": median_time(tfidf_svm, repeats),
        "tfidf_svm_accuracy": outcome["accuracy"],
        "tfidf_svm_f1_macro": outcome["f1_macro"],
    }


def copy_repository(target: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    subprocess.run(["git", "add", "-A"], cwd=target, check=True)
    subprocess.run([*git, "commit", "-qm", "benchmark"], cwd=target, check=True)


def dvc_noop(work: Path, overrides: list[str], repeats: int) -> dict[str, float]:
    """Full `dvc repro` once in a copy of the repository, then `dvc repro` with nothing changed."""
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    copy_repository(repo)
    compose_params(repo / "params.yaml", overrides, root=repo)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'dvc-mlflow.db'}",
    }

    def repro() -> None:
        result = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"dvc repro failed:\n{result.stderr[-3000:]}")

    full = median_time(repro, 1)
    return {"dvc_repro_full_seconds": full, "dvc_repro_noop_seconds": median_time(repro, repeats)}


def overhead_row(overhead: dict[str, Any]) -> str:
    """The train stage vs bare loop row: medians, the range of single runs, and the range of the
    ratio within each interleaved pair, so a reader sees how far the machine's noise moves it."""
    pipeline, bare = overhead["pipeline_runs"], overhead["bare_runs"]
    pairs = [p / b for p, b in zip(pipeline, bare)]
    return (
        f"| fasttext train stage vs bare PyTorch loop, {overhead['epochs']} epochs "
        f"| {overhead['pipeline_seconds']:.1f} s (runs {min(pipeline):.1f}–{max(pipeline):.1f}) "
        f"| {overhead['bare_seconds']:.1f} s (runs {min(bare):.1f}–{max(bare):.1f}) "
        f"| {overhead['ratio']:.2f}× (pairs {min(pairs):.2f}–{max(pairs):.2f}) |"
    )


def render_markdown(results: dict[str, Any]) -> str:
    baselines = results["baselines"]
    lines = [
        f"Measured {results['date']} on {results['machine']} (torch threads: {results['torch_threads']}), "
        f"full 20news-bydate corpus (train {results['counts']['train']} / val {results['counts']['val']} / "
        f"test {results['counts']['test']}).",
        "",
        "| model | test acc | test macro-F1 | train s | to 80% | to 84% | to 86% | to 88% | samples/s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def seconds(value: float | None) -> str:
        return "—" if value is None else f"{value:.0f}"

    for name, row in results["models"].items():
        to = row["time_to"]
        lines.append(
            f"| {name} | {row['test_accuracy']:.2%} | {row['test_f1_macro']:.2%} | {row['train_seconds']:.0f} | "
            f"{seconds(to['80%'])} | {seconds(to['84%'])} | {seconds(to['86%'])} | {seconds(to['88%'])} | "
            f"{row['samples_per_second']:.0f} | {row['peak_rss_mb']:.0f} |"
        )
    lines.append(
        f"| scikit-learn TF-IDF + LinearSVC | {baselines['tfidf_svm_accuracy']:.2%} | "
        f"{baselines['tfidf_svm_f1_macro']:.2%} | {baselines['tfidf_svm_seconds']:.1f} (fit + predict) | | | | | | |"
    )
    overhead = results["overhead"]
    prep = results["preprocess"]
    lines += [
        "",
        "| comparison (same run, medians) | textclf | reference | ratio |",
        "|---|---|---|---|",
        overhead_row(overhead),
        f"| preprocess stage (read archive, tokenize, encode, write) vs CountVectorizer fit_transform + transform "
        f"| {prep['seconds']:.1f} s | {baselines['countvectorizer_seconds']:.1f} s | {prep['ratio']:.2f}× |",
    ]
    if "dvc" in results:
        lines.append(
            f"| `dvc repro`, nothing changed | {results['dvc']['dvc_repro_noop_seconds']:.2f} s | | |"
        )  # its target: TARGETS
    lines += ["", *render_targets(results)]
    return "\n".join(lines) + "\n"


def update_readme(table: str, start: str = README_START, end: str = README_END) -> None:
    """Replaces what README.md holds between the markers ``start`` and ``end`` with ``table``."""
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise SystemExit(f"README.md has no {start} ... {end} markers to fill")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{table}{end}{tail}", encoding="utf-8")


def publish(results: dict[str, Any], table: str, directory: Path, name: str, markers: tuple[str, str] | None) -> None:
    """Writes ``<name>.json`` and ``<name>.md`` into ``directory``, the table into README.md
    between ``markers`` (None: README left as it is), and prints the table."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (directory / f"{name}.md").write_text(table, encoding="utf-8")
    if markers is not None:
        update_readme(table, *markers)
    print(table)


def git_commit() -> str:
    """The short commit of the measured tree ("unknown" outside a git checkout)."""
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return found.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", required=True, help="path or URL of 20news-bydate.tar.gz")
    parser.add_argument("--sha256", required=True, help="its SHA-256")
    parser.add_argument("--models", default=",".join(PRESETS))
    parser.add_argument("--repeats", type=int, default=7)  # the machine is noisy: medians of 7
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work")
    parser.add_argument("--skip-dvc", action="store_true", help="skip the `dvc repro` measurements")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where latest.json and latest.md go")
    parser.add_argument("--no-readme", action="store_true", help="leave the README's results table as it is")
    args = parser.parse_args(argv)

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = [
        f"data.url={Path(args.archive).resolve() if Path(args.archive).exists() else args.archive}",
        f"data.sha256={args.sha256}",
        "trainer.enable_progress_bar=false",
    ]
    paths = [f"paths.{name}={work / name}" for name in ("raw", "processed", "cache")]
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    cfg = validate(compose([*data, *paths], root=ROOT))

    import torch

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}",
        "torch_threads": torch.get_num_threads(),
    }
    print("download + preprocess", flush=True)
    download(cfg, cfg.paths.raw, progress=False)
    manifest: dict[str, Any] = {}
    prep_seconds = median_time(
        lambda: manifest.update(preprocess(cfg, cfg.paths.raw, cfg.paths.processed)), args.repeats
    )
    results["counts"] = manifest["counts"]

    print("scikit-learn baselines", flush=True)
    results["baselines"] = sklearn_baselines(cfg, args.repeats)
    results["preprocess"] = {
        "seconds": prep_seconds,
        "ratio": prep_seconds / results["baselines"]["countvectorizer_seconds"],
    }

    results["models"] = {}
    for name in args.models.split(","):
        print(f"model {name}", flush=True)
        params = work / f"{name}.yaml"
        out = [f"paths.models={work / name / 'models'}", f"paths.reports={work / name / 'reports'}"]
        write_params(params, [*PRESETS[name], *data, *paths, *out])
        results["models"][name] = run_worker("pipeline", params, "--per-epoch-test")

    print("framework overhead", flush=True)
    params = work / "overhead.yaml"
    # The default config exactly as users run it: progress bar and per-step logging on.
    as_shipped = [o for o in data if not o.startswith("trainer.enable_progress_bar")]
    write_params(
        params,
        [
            *as_shipped,
            *paths,
            f"paths.models={work / 'overhead' / 'models'}",
            f"paths.reports={work / 'overhead' / 'reports'}",
        ],
    )
    pipeline_runs, bare_runs = [], []
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
        pipeline_runs.append(run_worker("stage", params)["seconds"])
        bare_runs.append(run_worker("bare", params)["seconds"])
    results["overhead"] = {
        "epochs": yaml.safe_load(params.read_text())["trainer"]["max_epochs"],
        "pipeline_seconds": statistics.median(pipeline_runs),
        "bare_seconds": statistics.median(bare_runs),
        "pipeline_runs": pipeline_runs,
        "bare_runs": bare_runs,
    }
    results["overhead"]["ratio"] = results["overhead"]["pipeline_seconds"] / results["overhead"]["bare_seconds"]

    if not args.skip_dvc:
        print("dvc repro", flush=True)
        results["dvc"] = dvc_noop(work, [*data], args.repeats)

    markers = None if args.no_readme else (README_START, README_END)
    publish(results, render_markdown(results), args.results, "latest", markers)


if __name__ == "__main__":
    main()
