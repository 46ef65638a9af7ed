"""birdops.evaluate.plots: figure sizes, the PNG plots and the CSV files DVC plots read."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from birdops import metrics as m
from birdops.evaluate.plots import (
    CONFUSION_INCHES_PER_CLASS,
    DPI,
    confusion_side_inches,
    plot_confusion,
    plot_per_class_f1,
    tick_font_size,
    write_confusion_records,
    write_per_class_csv,
)


def test_figure_scales_with_the_number_of_classes() -> None:
    # at 89 classes: one row ~10 pt tall, labels ~5.6 pt, so every class name stays readable
    row_points = 72 * CONFUSION_INCHES_PER_CLASS
    assert tick_font_size(89) < row_points and 5.0 < tick_font_size(89) < 6.0
    assert tick_font_size(500) == 5.0 and tick_font_size(5) == 9.0
    assert confusion_side_inches(89) == pytest.approx(3.0 + 0.14 * 89)
    assert confusion_side_inches(10) < confusion_side_inches(89) < confusion_side_inches(1000) == 40.0


def test_plots_and_plot_data_files(tmp_path: Path) -> None:
    num_classes = 30
    names = [f"Genus species{i}" for i in range(num_classes)]
    rng = np.random.default_rng(1)
    labels = rng.integers(0, num_classes, size=200)
    scores = rng.normal(size=(200, num_classes))
    scores[np.arange(200), labels] += 2.0
    counts = m.confusion_counts(scores, labels)
    plot_confusion(m.normalize_rows(counts), names, tmp_path / "cm.png")
    table = m.per_class(scores, labels, names)
    plot_per_class_f1(table, tmp_path / "f1.png")
    for png in ("cm.png", "f1.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    height, width = imread(tmp_path / "cm.png").shape[:2]
    assert height == round(confusion_side_inches(num_classes) * DPI) and width > height  # + colour bar

    write_per_class_csv(table, tmp_path / "per_class.csv")
    rows = list(csv.DictReader((tmp_path / "per_class.csv").open()))
    assert len(rows) == num_classes and rows[3]["label"] == names[3]
    assert int(rows[3]["support"]) == int(np.sum(labels == 3))
    assert float(rows[3]["f1"]) == pytest.approx(table.f1[3], abs=1e-6)
    absent = m.per_class(scores[labels != 3], labels[labels != 3], names)  # class 3 has no example
    row = absent.rows()[3]
    assert row["support"] == 0 and row["f1"] == row["recall"] == row["average_precision"] == "n/a"

    predicted = m.predictions(scores)
    write_confusion_records(labels, predicted, names, tmp_path / "confusion.csv")
    records = list(csv.DictReader((tmp_path / "confusion.csv").open()))
    assert len(records) == 200
    assert records[0] == {"actual": names[labels[0]], "predicted": names[predicted[0]]}
    with pytest.raises(ValueError, match="does not match"):
        plot_confusion(np.zeros((2, 2)), names, tmp_path / "bad.png")
