"""The figures evaluate logs, and the per-class F1 plot DVC shows."""

from __future__ import annotations

import io

import yaml

from textclf import plots
from textclf.stages.evaluate import per_class_f1_csv

from conftest import REPO_ROOT

CURVES = (
    "epoch,step,train_loss,val_loss,val_accuracy,val_f1_macro\n"
    "0,5,1.1,1.0,0.5,0.4\n1,10,0.9,0.8,0.7,0.65\n2,15,0.5,,0.8,0.79\n"  # a blank cell is skipped
)
PER_CLASS = {"rec.boats": {"f1": 0.9, "support": 6}, "sci.orbits": {"f1": 0.4, "support": 6}}


def png(figure) -> bytes:  # noqa: ANN001 - matplotlib Figure
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def test_learning_curves_plot_each_recorded_value() -> None:
    figure = plots.learning_curves(CURVES)
    losses, scores = figure.axes
    assert [len(line.get_xdata()) for line in losses.get_lines()] == [3, 2]  # train, val (one blank)
    assert [list(line.get_ydata()) for line in scores.get_lines()] == [[0.5, 0.7, 0.8], [0.4, 0.65, 0.79]]
    assert png(figure)[:4] == b"\x89PNG"


def test_per_class_f1_bars_put_the_worst_class_on_top() -> None:
    figure = plots.per_class_f1(PER_CLASS, f1_macro=0.65)
    (ax,) = figure.axes
    assert [label.get_text() for label in ax.get_yticklabels()] == ["rec.boats", "sci.orbits"]  # bottom to top
    assert [bar.get_width() for bar in ax.patches] == [0.9, 0.4]
    assert "0.650" in ax.get_title()
    assert png(figure)[:4] == b"\x89PNG"


def test_per_class_f1_is_a_declared_dvc_bar_plot() -> None:
    assert per_class_f1_csv(PER_CLASS) == "class,f1\nrec.boats,0.9\nsci.orbits,0.4\n"
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    assert "${paths.reports}/per_class_f1.csv" in pipeline["stages"]["evaluate"]["outs"]
    assert "${paths.reports}/training_curves.csv" in pipeline["stages"]["evaluate"]["deps"]
    (plot,) = [
        p["${paths.reports}/per_class_f1.csv"]
        for p in pipeline["plots"]
        if isinstance(p, dict) and "${paths.reports}/per_class_f1.csv" in p
    ]
    assert plot["template"].startswith("bar_horizontal") and (plot["x"], plot["y"]) == ("f1", "class")
