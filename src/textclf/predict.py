"""Classify texts with a logged model, and register a run's model as the champion.

  python -m textclf.predict "first text" "second text"           (the last `dvc repro`'s run)
  python -m textclf.predict --run-id ID "first text" "second text"
  python -m textclf.predict --model-uri models:/textclf@champion --file texts.txt --json
  cat texts.txt | python -m textclf.predict --run-id ID           (one text per line)
  python -m textclf.predict --explain 5 "first text"              (the 5 tokens that weighed most)
  python -m textclf.predict --register --run-id ID [--name textclf] [--alias champion]

Models come from the MLflow store at --tracking-uri, else $MLFLOW_TRACKING_URI, else the
repository's mlflow.db. With neither --run-id nor --model-uri, the run is the one the last
`dvc repro` trained (<paths.models>/mlflow_run.json). Prints one line per text: label, its
probability, the text; for a multi-label model, the labels it gets (those at or above their
thresholds, each with its probability; "(none)" for none) and the text. With --explain [K]
(K = 10 when omitted), under each a table of the K tokens that pushed that label most, each
with its signed contribution to the label's calibrated logit (textclf.explain), asked of the
model as `mlflow models serve` asks it: params={"explain": K} (single-label models).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import pandas as pd

from textclf.errors import TextclfError, first_line, run_cli
from textclf.outputs import RUN_FILE
from textclf.provenance import project_root
from textclf.serving import EXPLAIN_PARAM, EXPLANATION_COLUMN, LABEL_COLUMN, LABELS_COLUMN, MODEL_NAME, TEXT_COLUMN
from textclf.tracking import (
    TrackingStore,
    default_tracking_uri,
    mlflow_tracking_uri,
    require_store,
    store_errors,
)

REGISTERED_NAME, CHAMPION = "textclf", "champion"
PROBABILITY_COLUMN = "probability"  # of the predicted label
SHOWN_CHARS = 70  # of each text, in the plain output
DEFAULT_EXPLAIN = 10  # tokens shown per text by a bare --explain


def run_model_uri(run_id: str) -> str:
    return f"runs:/{run_id}/{MODEL_NAME}"


def latest_run_id(root: Path | None = None) -> str:
    """The run that ``<paths.models>/mlflow_run.json`` of the repository at ``root`` names (the
    last `dvc repro`'s training; paths.models from its params.yaml, else models/)."""
    import yaml

    root = root if root is not None else project_root()
    params = root / "params.yaml"
    models = (
        (yaml.safe_load(params.read_text(encoding="utf-8")) or {}).get("paths", {}).get("models", "models")
        if params.is_file()
        else "models"
    )
    reference = root / models / RUN_FILE
    if not reference.is_file():
        raise TextclfError(
            f"no --run-id or --model-uri given, and no {reference} names a trained run "
            "(run `dvc repro` first, or give --run-id)"
        )
    try:
        return str(json.loads(reference.read_text(encoding="utf-8"))["run_id"])
    except (ValueError, KeyError, TypeError) as error:
        raise TextclfError(f"{reference}: no run id in it (run `dvc repro` again, or give --run-id)") from error


def load_model(model_uri: str, tracking_uri: str):  # noqa: ANN201 - mlflow.pyfunc.PyFuncModel
    """Loads ``runs:/<id>/model``, ``models:/<name>@<alias>``, ``models:/<name>/<version>``
    or a local model directory; a missing run, model or alias is one TextclfError.

    The model is copied into a temporary directory removed once it is loaded (left to itself
    MLflow copies it into a fresh one under $TMPDIR, 50-65 MB, and never removes it): the
    model reads every artifact into memory while it loads, and its code/ directory, which
    MLflow puts first on sys.path, is taken off it again (this process runs the textclf it
    has already imported)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with (
            mlflow_tracking_uri(require_store(tracking_uri)),
            store_errors(tracking_uri),
            tempfile.TemporaryDirectory(prefix="textclf-load-") as copy,
        ):
            path = list(sys.path)
            try:
                # suppress_warnings: no check of the model's pip requirements against every
                # installed distribution (seconds, and this process runs the textclf it imported).
                return mlflow.pyfunc.load_model(model_uri, dst_path=copy, suppress_warnings=True)
            except TextclfError as error:  # a refused artifact: named inside the model, not the copy
                raise TextclfError(
                    f"cannot load model {model_uri} from {tracking_uri}: {str(error).replace(copy + os.sep, '')}"
                ) from error
            finally:
                sys.path[:] = [entry for entry in sys.path if entry in path or not entry.startswith(copy)]
    except (MlflowException, OSError) as error:
        raise TextclfError(f"cannot load model {model_uri} from {tracking_uri}: {first_line(error)}") from error


def check_explain(count: int | None) -> int:
    """--explain's K (None: not given) -> tokens to explain each text by, 0 for none."""
    if count is None:
        return 0
    if count < 1:
        raise TextclfError(f"--explain {count}: give how many tokens to show per text, 1 or more (--explain alone: 10)")
    return count


def predict(model_uri: str, texts: list[str], tracking_uri: str, explain: int = 0) -> pd.DataFrame:
    """-> one row per text: ``label``, ``probability`` (of that label), then one probability
    column per class, and with ``explain`` K > 0 ``explanation``: the model's own (the
    shipped pyfunc's params={"explain": K}, a JSON list of [token, contribution]); a multi-label
    model's rows: ``labels`` (a list), then every label's probability."""
    if not texts:
        raise TextclfError("no texts to classify (give them as arguments, with --file, or on stdin)")
    model = load_model(model_uri, tracking_uri)
    params = {EXPLAIN_PARAM: explain} if explain else None
    try:
        frame = model.predict(pd.DataFrame({TEXT_COLUMN: texts}), params=params)
    except TextclfError as error:  # the model's one line (params.explain: text 2 ... has no token ...)
        raise TextclfError(str(error).replace(f"params.{EXPLAIN_PARAM}", "--explain", 1)) from error
    if LABELS_COLUMN in frame.columns:
        if explain:
            raise TextclfError(f"{model_uri}: --explain explains single-label models only (this one is multi-label)")
        return frame
    if explain and EXPLANATION_COLUMN not in frame.columns:  # MLflow drops a param the signature lacks
        raise TextclfError(f"{model_uri}: this model does not explain its predictions (logged before --explain)")
    classes = [column for column in frame.columns if column not in (LABEL_COLUMN, EXPLANATION_COLUMN)]
    frame.insert(1, PROBABILITY_COLUMN, frame[classes].max(axis=1))
    return frame


def register(run_id: str, tracking_uri: str, name: str = REGISTERED_NAME, alias: str | None = CHAMPION) -> int:
    """Registers the model run ``run_id`` logged as a new version of ``name`` and points
    ``alias`` at it; returns the version number."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with mlflow_tracking_uri(require_store(tracking_uri, write=True)):
            with store_errors(tracking_uri):  # not retried: a version registered twice is two versions
                version = mlflow.register_model(run_model_uri(run_id), name).version
            store = TrackingStore(tracking_uri)
            if alias is not None:
                store.set_registered_model_alias(name, alias, version)
    except MlflowException as error:
        raise TextclfError(f"cannot register the model of run {run_id} as {name}: {first_line(error)}") from error
    return int(version)


def read_texts(texts: list[str], file: Path | None, stdin: TextIO) -> list[str]:
    """Texts given as arguments, else one per non-empty line of ``file``, else of stdin.

    The served model takes strings; the corpus it was trained on was decoded by its data
    source (data.encoding, UTF-8 by default). Bytes (a file, a real stdin) are decoded as the
    sources decode by default (textclf.encoders.text.decode: UTF-8, and Latin-1 for a line that
    is not valid UTF-8, so no byte fails), so a UTF-8 text gets the tokens preprocess gave it.
    Lines are split on the bytes \n, \r\n and \r: str.splitlines would also split at
    characters such as U+0085 or U+2028."""
    from textclf.encoders.text import decode

    if texts and file is not None:
        raise TextclfError("give texts either as arguments or with --file, not both")
    if texts:
        return texts
    if file is not None:
        if not file.is_file():
            raise TextclfError(f"{file}: no such file")
        raw: bytes | None = file.read_bytes()
    else:
        binary = getattr(stdin, "buffer", None)  # absent on a StringIO
        raw = binary.read() if binary is not None else None
    lines = [decode(line)[0] for line in raw.splitlines()] if raw is not None else stdin.read().splitlines()
    return [line for line in lines if line.strip()]


def shortened(text: str) -> str:
    shown = " ".join(text.split())
    return shown if len(shown) <= SHOWN_CHARS else shown[: SHOWN_CHARS - 1] + "…"


def format_label_sets(frame: pd.DataFrame, texts: list[str]) -> str:
    """A multi-label model's plain output: per text, its labels with their probabilities
    (``a 0.912, b 0.634``, or ``(none)``), then the text (shortened)."""
    given = [
        ", ".join(f"{name} {row[name]:.3f}" for name in row[LABELS_COLUMN]) or "(none)" for _, row in frame.iterrows()
    ]
    width = max(len(line) for line in given)
    return "\n".join(f"{line:<{width}}  {shortened(text)}" for line, text in zip(given, texts))


def format_plain(frame: pd.DataFrame, texts: list[str]) -> str:
    """One line per text: label, probability, then the text (shortened)."""
    if LABELS_COLUMN in frame.columns:
        return format_label_sets(frame, texts)
    width = max(len(label) for label in frame[LABEL_COLUMN])
    lines = []
    for text, label, probability in zip(texts, frame[LABEL_COLUMN], frame[PROBABILITY_COLUMN]):
        shown = " ".join(text.split())
        shown = shown if len(shown) <= SHOWN_CHARS else shown[: SHOWN_CHARS - 1] + "…"
        lines.append(f"{label:<{width}}  {probability:.3f}  {shown}")
    return "\n".join(lines)


def format_explained(frame: pd.DataFrame, texts: list[str]) -> str:
    """Per text, its plain line, then a table of its explanation: rank, token, contribution
    (signed, to the label's calibrated logit: + pushed toward the label, - away from it)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(width=100, record=True, file=io.StringIO(), color_system=None)
    for line, (_, row) in zip(format_plain(frame, texts).split("\n"), frame.iterrows()):
        console.print(line, soft_wrap=True)
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("#", justify="right")
        table.add_column("token")
        table.add_column(f"toward {row[LABEL_COLUMN]}", justify="right")
        for rank, (token, contribution) in enumerate(json.loads(row[EXPLANATION_COLUMN]), start=1):
            table.add_row(str(rank), token, f"{contribution:+.4f}")
        console.print(table)
    return console.export_text().rstrip("\n")


def format_json(frame: pd.DataFrame, texts: list[str]) -> str:
    """A JSON list: text, label, probability and every class's probability, per text; with an
    explanation, also ``explanation``: [{"token": ..., "contribution": ...}, ...]. A multi-label
    model's: text, labels, every label's probability."""
    if LABELS_COLUMN in frame.columns:
        names = [column for column in frame.columns if column != LABELS_COLUMN]
        sets = [
            {
                "text": text,
                "labels": list(row[LABELS_COLUMN]),
                "probabilities": {name: float(row[name]) for name in names},
            }
            for text, (_, row) in zip(texts, frame.iterrows())
        ]
        return json.dumps(sets, indent=2, ensure_ascii=False)
    classes = [c for c in frame.columns if c not in (LABEL_COLUMN, PROBABILITY_COLUMN, EXPLANATION_COLUMN)]
    rows = []
    for text, (_, row) in zip(texts, frame.iterrows()):
        rows.append(
            {
                "text": text,
                "label": row[LABEL_COLUMN],
                "probability": float(row[PROBABILITY_COLUMN]),
                "probabilities": {name: float(row[name]) for name in classes},
            }
        )
        if EXPLANATION_COLUMN in frame.columns:
            rows[-1]["explanation"] = [
                {"token": token, "contribution": contribution}
                for token, contribution in json.loads(row[EXPLANATION_COLUMN])
            ]
    return json.dumps(rows, indent=2, ensure_ascii=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m textclf.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--run-id", help="use the model logged by this training run (default: the one models/mlflow_run.json names)"
    )
    source.add_argument("--model-uri", help="any MLflow model URI, e.g. models:/textclf@champion")
    parser.add_argument("texts", nargs="*", help="texts to classify (default: --file, else stdin)")
    parser.add_argument("--file", type=Path, help="read texts from this file, one per line")
    parser.add_argument("--json", action="store_true", help="print JSON with every class's probability")
    parser.add_argument(
        "--explain",
        nargs="?",
        type=int,
        const=DEFAULT_EXPLAIN,
        metavar="K",
        help="show the K tokens that pushed each prediction most, with their signed contributions (K: %(const)s)",
    )
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--register", action="store_true", help="register the run's model instead of predicting")
    parser.add_argument("--name", default=REGISTERED_NAME, help="registered model name (default: %(default)s)")
    parser.add_argument("--alias", default=CHAMPION, help="alias for the new version (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.register and (args.model_uri is not None or args.texts or args.file or args.explain is not None):
        parser.error("--register takes --run-id (default: the last `dvc repro`'s run) and no texts")

    def command() -> None:
        uri = args.tracking_uri or default_tracking_uri()
        run_id = args.run_id if args.run_id is not None or args.model_uri is not None else latest_run_id()
        if args.register:
            version = register(run_id, uri, args.name, args.alias)
            print(
                f"registered {run_model_uri(run_id)} as {args.name} version {version}; "
                f"use models:/{args.name}@{args.alias}"
            )
            return
        explain = check_explain(args.explain)
        texts = read_texts(args.texts, args.file, sys.stdin)
        frame = predict(args.model_uri or run_model_uri(run_id), texts, uri, explain)
        if args.json:
            print(format_json(frame, texts))
        else:
            print(format_explained(frame, texts) if explain else format_plain(frame, texts))

    run_cli("predict", command)


if __name__ == "__main__":
    main()
