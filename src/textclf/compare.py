"""The best runs in the MLflow store, side by side.

  python -m textclf.compare                                  # top 10 by test/accuracy
  python -m textclf.compare --model fasttext --top 5
  python -m textclf.compare --sort val/f1_macro --experiment textclf
  python -m textclf.compare --sort test/loss --ascending

Runs come from --tracking-uri, else $MLFLOW_TRACKING_URI, else the repository's mlflow.db.
Besides a few key params, every param whose value differs among the listed runs gets a column
(the seed, data.min_freq, ...; params equal in all of them are left out). Metric values are the
last ones logged (as the MLflow UI shows them); runs without the sort metric (trained, never
evaluated) come last.
"""

from __future__ import annotations

import argparse
from typing import Any

from textclf.errors import TextclfError, run_cli
from textclf.metrics import TEST_ACCURACY, TEST_F1_MACRO, TEST_F1_MICRO, VAL_F1_MACRO
from textclf.tracking import TrackingStore, default_tracking_uri, require_store

EXPERIMENT, SORT, TOP = "textclf", TEST_ACCURACY, 10
# Shown for every run; "optimizer" is the class name from optimizer._target_.
KEY_PARAMS = ("optimizer", "optimizer.lr", "trainer.max_epochs", "train.batch_size", "model.embed_dim")
METRICS = (VAL_F1_MACRO, TEST_ACCURACY, TEST_F1_MACRO)
# A multi-label run logs the same names (test/accuracy: its subset accuracy; textclf.metrics)
# and these, shown when a listed run has them.
MULTI_LABEL_METRICS = (TEST_F1_MICRO,)
# Never columns of their own: where a run's files and records went, not what it trained
# (model._target_ is the model column, optimizer._target_ the optimizer column).
NOT_COMPARED = ("paths.", "tracking.", "model._target_", "optimizer._target_")


def differing_params(runs: list[Any]) -> list[str]:
    """Params, beyond KEY_PARAMS, that two of ``runs`` logged with different values (sorted).
    A param some runs lack (model.hidden_dim beside a fasttext run) counts among those that have it."""
    values: dict[str, set[str]] = {}
    for run in runs:
        for key, value in run.data.params.items():
            values.setdefault(key, set()).add(value)
    return sorted(
        key
        for key, seen in values.items()
        if len(seen) > 1 and key not in KEY_PARAMS and not key.startswith(NOT_COMPARED)
    )


def _quoted(value: str, what: str, quote: str) -> str:
    if quote in value:
        raise TextclfError(f"{what} {value!r}: may not contain {quote}")
    return value


def best_runs(
    tracking_uri: str,
    experiment: str = EXPERIMENT,
    model: str | None = None,
    sort: str = SORT,
    top: int = TOP,
    ascending: bool = False,
) -> list[dict[str, Any]]:
    """The ``top`` runs of ``experiment`` ordered by metric ``sort``, one dict per run: run_id,
    run_name, model, the KEY_PARAMS and the params that differ among these runs
    (differing_params; strings, None where not logged) and the METRICS plus ``sort`` (floats,
    None where not logged).

    ``model`` keeps runs whose model family (the ``model`` tag: FastText, LSTMClassifier, ...)
    contains it, ignoring case: ``fasttext``, ``lstm``, ``transformer``."""
    if top < 1:
        raise TextclfError(f"--top must be at least 1 (got {top})")
    store = TrackingStore(require_store(tracking_uri))
    filter_string = "" if model is None else "tags.model ILIKE '%" + _quoted(model, "--model", "'") + "%'"
    order = "metrics.`" + _quoted(sort, "--sort", "`") + ("` ASC" if ascending else "` DESC")
    found = store.get_experiment_by_name(experiment)
    if found is None:
        raise TextclfError(f"no experiment '{experiment}' in {tracking_uri} (train a model first)")
    runs = store.search_runs(
        [found.experiment_id],
        filter_string=filter_string,
        order_by=[order, "attributes.start_time DESC"],
        max_results=top,
    )
    rows = []
    differing = differing_params(runs)
    shown = (*METRICS, *(key for key in MULTI_LABEL_METRICS if any(key in run.data.metrics for run in runs)))
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        optimizer = params.get("optimizer._target_")
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "model": run.data.tags.get("model"),
            "optimizer": optimizer.rsplit(".", 1)[-1] if optimizer else None,
        }
        row.update({key: params.get(key) for key in (*KEY_PARAMS[1:], *differing)})
        row.update({key: metrics.get(key) for key in dict.fromkeys((*shown, sort))})
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], title: str) -> None:
    """Prints ``rows`` as a rich table (metrics to 4 decimals, blanks where not logged)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = list(rows[0]) if rows else ["run_id", "run_name", "model", *KEY_PARAMS, *METRICS]
    for column in columns:
        numeric = column not in ("run_id", "run_name", "model", "optimizer")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=column == "run_id")
    for row in rows:
        table.add_row(
            *(
                "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
                for value in row.values()
            )
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m textclf.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model family to keep: fasttext, lstm, transformer (default: all)")
    parser.add_argument("--sort", default=SORT, help="metric to rank by (default: %(default)s)")
    parser.add_argument("--ascending", action="store_true", help="lowest first (for losses)")
    parser.add_argument("--top", type=int, default=TOP, help="runs to show (default: %(default)s)")
    parser.add_argument("--experiment", default=EXPERIMENT, help="MLflow experiment (default: %(default)s)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    args = parser.parse_args(argv)

    def command() -> None:
        rows = best_runs(
            args.tracking_uri or default_tracking_uri(),
            args.experiment,
            args.model,
            args.sort,
            args.top,
            args.ascending,
        )
        order = "lowest" if args.ascending else "highest"
        family = f" {args.model}" if args.model else ""
        render(rows, f"{len(rows)}{family} runs of '{args.experiment}', {order} {args.sort} first")

    run_cli("compare", command)


if __name__ == "__main__":
    main()
