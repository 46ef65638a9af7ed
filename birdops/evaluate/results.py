"""What evaluating one variant measures, and the files written for it under ``eval/<variant>/``.

No torch here: :mod:`birdops.evaluate.scoring` runs the models and gives a
:class:`VariantEvaluation`; :mod:`birdops.evaluate.selection` compares and chooses among them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np

from birdops import metrics
from birdops.config import EvaluateParams
from birdops.contracts import CALIBRATION_FILE, EVAL_DIR
from birdops.evaluate import field, layout, plots, uncertainty
from birdops.files import write_csv_atomic, write_json_atomic


@dataclass(frozen=True)
class Scored:
    """Scores ``(N, C)`` (logits or probabilities) of ``N`` items and their labels ``(N,)``."""

    scores: np.ndarray
    labels: np.ndarray
    groups: np.ndarray  # (N,) the recording of each item: bootstrap resamples recordings

    @property
    def summary(self) -> metrics.Summary:
        return metrics.summarize(self.scores, self.labels)

    def intervals(self, params: EvaluateParams) -> dict[str, float]:
        """95% bootstrap intervals over recordings, flat: ``{metric}_low``, ``{metric}_high``."""
        found = uncertainty.intervals(
            metrics.predictions(self.scores),
            self.labels,
            self.groups,
            self.scores.shape[1],
            params.bootstrap_draws,
            params.bootstrap_seed,
        )
        return {f"{name}_{end}": getattr(i, end) for name, i in found.items() for end in ("low", "high")}


@dataclass(frozen=True)
class Skipped:
    """A recording left out of the recording-level evaluation, and why."""

    id: str
    reason: str


@dataclass(frozen=True)
class VariantEvaluation:
    """Everything measured for one variant."""

    name: str
    labels: tuple[str, ...]
    test_clip: Scored
    val_clip: Scored
    test_recording: Scored
    field: field.FieldResult
    skipped: list[Skipped] = dataclass_field(default_factory=list)

    def to_details(self, params: EvaluateParams) -> dict[str, Any]:
        """``details.json``: the metrics of each level, their 95% intervals over test recordings, the
        sizes they rest on, and detection on the test and validation windows."""
        return {
            "test_clip": self.test_clip.summary.to_dict(),
            "test_clip_ci95": self.test_clip.intervals(params),
            "test_recording": self.test_recording.summary.to_dict(),
            "test_recording_ci95": self.test_recording.intervals(params),
            "val_clip": self.val_clip.summary.to_dict(),
            "n_test_clips": len(self.test_clip.labels),
            "n_test_recordings": len(self.test_recording.labels),
            "n_skipped_recordings": len(self.skipped),
            "n_val_clips": len(self.val_clip.labels),
            "detection": self.field.metrics,
            "val_detection": self.field.validation,
        }


def write_variant(result: VariantEvaluation, out_dir: Path, params: EvaluateParams) -> dict[str, Any]:
    """Write ``<name>.json`` (the headline) and ``eval/<name>/``; return the details.

    ``eval/<name>/``: ``details.json``, ``per_class.csv`` (test clips) and ``per_class_recording.csv``,
    ``confusion.csv`` (``actual, predicted`` per test clip, for DVC's confusion templates),
    ``confusion.png`` (rows normalised), ``per_class_f1.png``, ``skipped.csv``, ``calibration.json``
    and ``detection_per_class.csv``.
    """
    details = result.to_details(params)
    folder = out_dir / EVAL_DIR / result.name
    write_json_atomic(folder / layout.DETAILS_FILE, details)
    write_json_atomic(out_dir / f"{result.name}.json", layout.headline(details))
    recording = result.test_recording
    recording_table = metrics.per_class(recording.scores, recording.labels, result.labels)
    plots.write_per_class_csv(recording_table, folder / "per_class_recording.csv")

    clip = result.test_clip
    table = metrics.per_class(clip.scores, clip.labels, result.labels)
    plots.write_per_class_csv(table, folder / "per_class.csv")
    predicted = metrics.predictions(clip.scores)
    plots.write_confusion_records(clip.labels, predicted, result.labels, folder / "confusion.csv")
    normalized = metrics.normalize_rows(metrics.confusion_counts(clip.scores, clip.labels))
    title = f"{result.name}: test clips"
    plots.plot_confusion(
        normalized, result.labels, folder / "confusion.png", title=f"{title}, rows normalised"
    )
    plots.plot_per_class_f1(table, folder / "per_class_f1.png", title=f"{title}, per-class F1")
    write_skipped(result.skipped, folder / "skipped.csv")
    write_json_atomic(folder / CALIBRATION_FILE, result.field.calibration_document(result.labels))
    per_class = result.field.per_class
    write_csv_atomic(folder / "detection_per_class.csv", list(per_class[0]), per_class)
    return details


def write_skipped(skipped: Sequence[Skipped], path: Path) -> None:
    """``id, reason`` of the recordings left out of the recording-level evaluation."""
    write_csv_atomic(path, ["id", "reason"], ({"id": s.id, "reason": s.reason} for s in skipped))
