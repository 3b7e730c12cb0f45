"""Figures evaluate writes, logs to MLflow and puts in the run report: the confusion heatmap,
learning curves, test F1 per class, the reliability diagram.

Each function takes what the stages compute or already wrote (the confusion matrix,
training_curves.csv, per_class.json, textclf.calibration.reliability_bins' rows) and
returns a matplotlib Figure made directly (``Figure()``, not ``pyplot.figure()``): pyplot keeps
no reference to it (nothing to close) and ``fig.savefig`` renders it with any backend
(``png_bytes``).
"""

from __future__ import annotations

import csv
import io
import textwrap
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from textclf.metrics import CURVE_COLUMNS

if TYPE_CHECKING:
    import torch

# Tick labels of the heatmap wrap past this many characters (20 Newsgroups' longest name,
# comp.os.ms-windows.misc, has 23), so a corpus's long class names do not squeeze the cells.
TICK_WIDTH = 24

# The columns of training_curves.csv (textclf.metrics.CURVES) -> (panel, legend label).
CURVE_PANELS = {
    "train_loss": ("losses", "train"),
    "val_loss": ("losses", "validation"),
    "val_accuracy": ("scores", "accuracy"),
    "val_f1_macro": ("scores", "macro-F1"),
}


def png_bytes(figure: Figure) -> bytes:
    """``figure`` rendered as PNG bytes (at its own size and dpi)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def confusion(matrix: torch.Tensor, names: list[str]) -> Figure:
    """The confusion matrix (C, C) (rows: actual class, columns: predicted) as a heatmap with
    each nonzero count written in its cell; about 0.45 inch per class, at least 6 inches."""
    size = max(6.0, 0.45 * len(names))
    fig = Figure(figsize=(size, size), dpi=100)
    ax = fig.subplots()
    ax.imshow(matrix.numpy(), cmap="Blues")
    ticks = [textwrap.fill(name, TICK_WIDTH) for name in names]
    ax.set_xticks(range(len(names)), ticks, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), ticks, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    dark = matrix.max().item() / 2  # counts above this are drawn in white on dark cells
    for row, row_counts in enumerate(matrix.tolist()):
        for col, count in enumerate(row_counts):
            if count:
                color = "white" if count > dark else "black"
                ax.text(col, row, str(count), ha="center", va="center", fontsize=6, color=color)
    fig.tight_layout()
    return fig


def _column(rows: list[dict[str, str]], name: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the rows where ``name`` was recorded (blank cells are skipped)."""
    kept = [(float(row["epoch"]), float(row[name])) for row in rows if row.get(name) not in (None, "")]
    return [epoch for epoch, _ in kept], [value for _, value in kept]


def learning_curves(curves_csv: str) -> Figure:
    """training_curves.csv text (CURVE_COLUMNS: epoch, step, train_loss, val_loss, ...) -> two
    panels: the losses, and the validation accuracy and macro-F1, per epoch."""
    rows = list(csv.DictReader(io.StringIO(curves_csv)))
    fig = Figure(figsize=(10, 4), dpi=100)
    losses, scores = fig.subplots(1, 2)
    panels = {"losses": losses, "scores": scores}
    for name in CURVE_COLUMNS[2:]:  # after epoch and step
        panel, label = CURVE_PANELS[name]
        panels[panel].plot(*_column(rows, name), marker="o", label=label)
    losses.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    scores.set(title="Validation", xlabel="epoch", ylabel="score", ylim=(0.0, 1.0))
    for ax in (losses, scores):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
        ax.legend()
    fig.tight_layout()
    return fig


def per_class_f1(per_class: dict[str, dict[str, Any]], f1_macro: float | None = None) -> Figure:
    """per_class.json ({class: {"f1": ..., ...}}) -> horizontal bars, worst class at the top,
    and the macro-F1 (if given) as a dashed line."""
    ranked = sorted(per_class.items(), key=lambda item: item[1]["f1"], reverse=True)
    names = [name for name, _ in ranked]
    scores = [float(row["f1"]) for _, row in ranked]
    fig = Figure(figsize=(7, max(2.5, 0.3 * len(names) + 1)), dpi=100)  # ~0.3 inch per class
    ax = fig.subplots()
    bars = ax.barh(names, scores, color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
    title = "Test F1 per class"
    if f1_macro is not None:  # named in the title: a legend would cover bars
        ax.axvline(f1_macro, color="tab:red", linestyle="--")
        title += f" (dashed: macro-F1 {f1_macro:.3f})"
    ax.set(title=title, xlabel="F1", xlim=(0.0, 1.1))
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


def reliability(
    uncalibrated: list[dict[str, float]],
    calibrated: list[dict[str, float]],
    ece_uncalibrated: float,
    ece_calibrated: float,
    temperature: float,
) -> Figure:
    """The reliability diagram: each bin's accuracy against its mean confidence (the rows of
    textclf.calibration.reliability_bins), before and after the temperature, a marker's area
    growing with the bin's documents; a calibrated model's points lie on the dashed diagonal."""
    fig = Figure(figsize=(5.5, 5), dpi=100)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for rows, label, color in (
        (uncalibrated, f"uncalibrated (ECE {ece_uncalibrated:.3f})", "tab:red"),
        (calibrated, f"T = {temperature:.3g} (ECE {ece_calibrated:.3f})", "tab:blue"),
    ):
        total = sum(row["count"] for row in rows) or 1
        confidence = [row["confidence"] for row in rows]
        accuracy = [row["accuracy"] for row in rows]
        ax.plot(confidence, accuracy, color=color, label=label)
        ax.scatter(confidence, accuracy, s=[10 + 400 * row["count"] / total for row in rows], color=color, alpha=0.6)
    ax.set(
        title="Reliability on the test split",
        xlabel="confidence (top probability)",
        ylabel="accuracy",
        xlim=(0.0, 1.02),
        ylim=(0.0, 1.02),
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig
