"""Evaluation plots (PNG, matplotlib's Agg canvas, never a display) and the data files DVC plots read.

Figures are built on :class:`matplotlib.figure.Figure` directly rather than through ``pyplot``, so no
global backend or figure registry is touched and nothing leaks between calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from birdops.files import atomic_path, write_csv_atomic
from birdops.metrics import PerClass

# layout of the confusion-matrix figure: inches per class on top of a fixed margin, bounded
CONFUSION_INCHES_PER_CLASS = 0.14
CONFUSION_MARGIN_INCHES = 3.0
CONFUSION_MAX_INCHES = 40.0
BAR_INCHES_PER_CLASS = 0.16
DPI = 150


def tick_font_size(num_classes: int) -> float:
    """Tick-label size in points: 9 for a handful of classes, about 5.6 at 89, never below 5 (one
    label per matrix row: the figure grows ~10 pt per class, see ``CONFUSION_INCHES_PER_CLASS``)."""
    return float(np.clip(500.0 / max(num_classes, 1), 5.0, 9.0))


def confusion_side_inches(num_classes: int) -> float:
    """Height of the confusion-matrix figure: a margin plus a fixed share per class, bounded
    (about 15.5 in at 89 classes, so each row is ~10 pt tall for its ~5.6 pt label)."""
    return min(CONFUSION_MARGIN_INCHES + CONFUSION_INCHES_PER_CLASS * num_classes, CONFUSION_MAX_INCHES)


def _new_figure(width_inches: float, height_inches: float) -> Figure:
    fig = Figure(figsize=(width_inches, height_inches), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Figure, path: Path) -> None:
    # the temporary file's name has no .png suffix, so the format is named
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png")


def plot_confusion(normalized: np.ndarray, labels: Sequence[str], path: Path, title: str = "") -> None:
    """Save the row-normalised confusion matrix ``(C, C)`` (row = true, column = predicted) as a PNG.

    The figure grows with the number of classes (bounded) and the tick labels shrink, so every
    class stays readable at 89 classes; colours are fixed to [0, 1] so figures compare across runs.
    """
    num_classes = len(labels)
    if normalized.shape != (num_classes, num_classes):
        raise ValueError(f"confusion matrix {normalized.shape} does not match {num_classes} labels")
    side = confusion_side_inches(num_classes)
    fig = _new_figure(side + 1.0, side)  # + room for the colour bar
    ax = fig.add_subplot()
    image = ax.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ticks = np.arange(num_classes)
    font = tick_font_size(num_classes)
    ax.set_xticks(ticks, labels=list(labels), rotation=90, fontsize=font)
    ax.set_yticks(ticks, labels=list(labels), fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (rows normalised)")
    fig.colorbar(image, ax=ax, shrink=0.6, label="share of the true class")
    _save_png(fig, path)


def plot_per_class_f1(table: PerClass, path: Path, title: str = "") -> None:
    """Save horizontal F1 bars, one per class with support, best at the top, as a PNG."""
    present = np.flatnonzero(table.support > 0)
    order = present[np.argsort(-table.f1[present], kind="stable")]
    names = [f"{table.labels[i]} (n={int(table.support[i])})" for i in order]
    fig = _new_figure(8.0, 1.5 + BAR_INCHES_PER_CLASS * max(len(order), 1))
    ax = fig.add_subplot()
    positions = np.arange(len(order))
    ax.barh(positions, table.f1[order], color="tab:blue")
    ax.set_yticks(positions, labels=names, fontsize=tick_font_size(len(order)))
    ax.margins(y=0.01)
    ax.invert_yaxis()  # best class first
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("F1")
    ax.set_title(title or "per-class F1")
    _save_png(fig, path)


def write_per_class_csv(table: PerClass, path: Path) -> None:
    """``label, support, precision, recall, f1, average_precision``, one row per class (index order)."""
    rows = table.rows()
    write_csv_atomic(path, list(rows[0]), rows)


def write_confusion_records(
    true_index: np.ndarray, predicted_index: np.ndarray, labels: Sequence[str], path: Path
) -> None:
    """``actual, predicted`` class names, one row per sample: the input of DVC's ``confusion`` and
    ``confusion_normalized`` plot templates."""
    if true_index.shape != predicted_index.shape:
        raise ValueError(f"{true_index.shape} true and {predicted_index.shape} predicted indices")
    pairs = zip(true_index, predicted_index, strict=True)
    rows = ({"actual": labels[t], "predicted": labels[p]} for t, p in pairs)
    write_csv_atomic(path, ["actual", "predicted"], rows)
