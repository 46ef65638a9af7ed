"""How a variant does on field audio: calibration, per-species thresholds and detection metrics.

A field recording is scored window by window, and most of its windows hold none of the species. For
each variant this module gathers two sets of windows, scores them with the model and its front end,
and measures what a user of ``birdops predict`` gets:

- *validation* windows, which fit the calibration and choose the thresholds: the validation clips
  (one species each; the recording's xeno-canto background species masked), the validation
  background clips (no species), the even windows of the validation soundscapes (truth from their
  annotated events, :func:`birdops.detection.window_targets`) and of every validation background
  recording (whole, no species anywhere: the false-alarm audio the thresholds are set on);
- *test* windows, never used to fit anything: the even windows of the test soundscapes and of every
  test background recording (whole, no species anywhere).

The calibration is one Platt scaling for all species, ``activation(scale * logits + bias)``
(:func:`birdops.detection.fit_calibration`). The thresholds follow ``field.thresholds``:
``false_alarms`` (the default) sets one threshold for every species at which at most
``max_background_flagged`` of the validation background-only windows hold a detection
(:func:`birdops.detection.false_alarm_thresholds`); ``precision`` gives each species
``target_precision`` on the validation windows where it has enough positives, the pooled threshold
otherwise (:func:`birdops.detection.choose_thresholds`). Both go into
``eval/<variant>/calibration.json``, which the export writes into the ONNX metadata. The test windows
give BirdCLEF's cmAP and the macro ROC-AUC, precision and recall at the thresholds, the false
detections per hour of background-only audio and the share of its windows with any detection, and the
top-label ECE before and after calibration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import birdops.detection as detection
from birdops.audio import AudioError, load_audio
from birdops.config import FieldEvalParams
from birdops.contracts import (
    ManifestRow,
    PathEscapeError,
    background_manifest_path,
    background_split,
    manifest_path,
    read_manifest,
    read_soundscapes,
)
from birdops.features.shards import Clips, load_split
from birdops.scores import scores as activated
from birdops.windows import even_windows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Windows:
    """Scored windows: logits and truth, and which are background only (no species anywhere)."""

    logits: np.ndarray  # (N, C) float32
    targets: np.ndarray  # (N, C) float32 in {0, 1}
    mask: np.ndarray  # (N, C) bool: False where the entry is ambiguous
    background_seconds: float  # audio the background-only windows cover (overlaps counted once)

    @property
    def background_only(self) -> np.ndarray:
        out: np.ndarray = detection.background_windows(self.targets, self.mask)
        return out

    @staticmethod
    def join(parts: Sequence[Windows]) -> Windows:
        return Windows(
            np.concatenate([p.logits for p in parts]),
            np.concatenate([p.targets for p in parts]),
            np.concatenate([p.mask for p in parts]),
            sum(p.background_seconds for p in parts),
        )


# ---------------------------------------------------------------------------------------- scoring
# a model's logits (N, C) float32 of N inputs: cached features (N, F, T) for the model, or waveform
# windows (N, S) for the model behind its front end (birdops.evaluate.scoring runs it)
Logits = Callable[[np.ndarray | Clips], np.ndarray]


def clip_windows(
    logits: Logits,
    lms_dir: Path,
    preset: str,
    split: str,
    secondary: dict[str, list[int]],
    num_classes: int,
) -> Windows:
    """The cached clips of ``split`` (one species each, its background species masked) and of its
    background (no species), scored by ``logits`` (the model's, on cached features)."""
    species = load_split(lms_dir, preset, split)
    background = load_split(lms_dir, preset, background_split(split))
    targets = np.zeros((len(species.labels) + len(background.labels), num_classes), dtype=np.float32)
    targets[np.arange(len(species.labels)), species.labels] = 1.0
    mask = np.ones_like(targets, dtype=bool)
    for row, recording in enumerate(species.ids):
        mask[row, secondary.get(recording, [])] = False
    scored = np.concatenate([logits(part.features) for part in (species, background) if len(part.labels)])
    seconds = len(background.labels) * species.clip_seconds
    return Windows(scored, targets, mask, seconds)


def recording_windows(
    logits: Logits,
    waves: Iterable[tuple[np.ndarray, Sequence[tuple[float, float, int]]]],
    sample_rate_hz: int,
    window_seconds: float,
    params: FieldEvalParams,
    hop_seconds: float,
    num_classes: int,
) -> Windows:
    """Even windows (:func:`birdops.windows.even_windows`) of whole recordings ``(wave, events
    (start_s, end_s, class index))``, scored by ``logits`` (the front end and model, on waveform
    windows), with their truth from the events (none: background only)."""
    parts = []
    for wave, events in waves:
        windows, starts_s = even_windows(wave, sample_rate_hz, window_seconds, hop_seconds)
        targets, mask = detection.window_targets(
            starts_s,
            window_seconds,
            [detection.Event(start, end, index) for start, end, index in events],
            num_classes,
            params.min_event_overlap_seconds,
        )
        quiet = detection.background_windows(targets, mask)
        seconds = detection.covered_seconds(starts_s[quiet], window_seconds) if quiet.any() else 0.0
        parts.append(Windows(logits(windows), targets, mask, seconds))
    if not parts:
        raise ValueError("no recording to score")
    return Windows.join(parts)


def soundscape_waves(
    folder: Path, split: str, labels: Sequence[str], sample_rate_hz: int
) -> Iterator[tuple[np.ndarray, list[tuple[float, float, int]]]]:
    """Each soundscape of ``split`` in ``folder`` decoded at ``sample_rate_hz``, with its events as class
    indices (an event of a label the model does not know is left out: it is background there)."""
    index = {label: i for i, label in enumerate(labels)}
    for soundscape in read_soundscapes(folder):
        if soundscape.split != split:
            continue
        events = [(e.start_s, e.end_s, index[e.label]) for e in soundscape.events if e.label in index]
        yield load_audio(soundscape.audio_path(folder), sample_rate_hz), events


def background_waves(
    rows: Sequence[ManifestRow], background_dir: Path, sample_rate_hz: int
) -> Iterator[tuple[np.ndarray, list[tuple[float, float, int]]]]:
    """Each background recording decoded whole at ``sample_rate_hz`` (no events); one that cannot be
    decoded is logged and left out."""
    for row in rows:
        try:
            yield load_audio(row.audio_path(background_dir), sample_rate_hz), []
        except (AudioError, PathEscapeError) as err:
            log.warning("background recording %s left out of the field evaluation: %s", row.id, err)


# ---------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class FieldResult:
    """A variant's calibration, thresholds and field metrics."""

    activation: str
    scale: float
    bias: float
    thresholds: detection.Thresholds
    metrics: dict[str, Any]  # test detection metrics (flat, for dvc metrics diff)
    validation: dict[str, Any]  # validation detection metrics (the export is chosen on these)
    per_class: list[dict[str, Any]]  # per species: test AP, ROC AUC, threshold and its rule

    def calibration_document(self, labels: Sequence[str]) -> dict[str, Any]:
        """``calibration.json``: what the export writes into the model, and how it was chosen."""
        return {
            "activation": self.activation,
            "scale": self.scale,
            "bias": self.bias,
            "thresholds": [float(t) for t in self.thresholds.values],
            "choice": self.thresholds.to_dict(labels),
        }


def measure(
    windows: Windows, activation: str, scale: float, bias: float, thresholds: np.ndarray
) -> dict[str, Any]:
    """Detection metrics of scored ``windows`` under a calibration and thresholds."""
    raw = activated(windows.logits, activation)
    calibrated = activated(windows.logits, activation, scale, bias)
    hits = detection.precision_recall_at(calibrated, windows.targets, windows.mask, thresholds)
    quiet = windows.background_only
    out: dict[str, Any] = {
        "cmap": detection.cmap(calibrated, windows.targets, windows.mask),
        "roc_auc": detection.roc_auc_macro(calibrated, windows.targets, windows.mask),
        "precision": hits.precision,
        "recall": hits.recall,
        "ece_uncalibrated": detection.expected_calibration_error(raw, windows.targets, windows.mask),
        "ece_calibrated": detection.expected_calibration_error(calibrated, windows.targets, windows.mask),
        "n_windows": len(windows.logits),
    }
    if quiet.any() and windows.background_seconds > 0:
        false = detection.false_detections_per_hour(calibrated[quiet], thresholds, windows.background_seconds)
        out |= {
            "false_detections_per_hour": false.per_hour,
            "background_windows_flagged": false.flagged_fraction,
            "background_hours": windows.background_seconds / 3600,
        }
    return out


def choose(calibrated: np.ndarray, validation: Windows, params: FieldEvalParams) -> detection.Thresholds:
    """The thresholds of ``params.thresholds``'s rule on the ``calibrated`` validation scores."""
    if params.thresholds == "false_alarms":
        if not validation.background_only.any():
            raise ValueError(
                "evaluate.field.thresholds is false_alarms, but no validation window is background only "
                "(no validation background recording, and no soundscape stretch without a species): "
                "add background recordings from more sites, or set evaluate.field.thresholds=precision"
            )
        return detection.false_alarm_thresholds(
            calibrated, validation.targets, validation.mask, params.max_background_flagged
        )
    return detection.choose_thresholds(
        calibrated, validation.targets, validation.mask, params.target_precision, params.min_positives
    )


def fit_and_measure(
    validation: Windows, test: Windows, activation: str, labels: Sequence[str], params: FieldEvalParams
) -> FieldResult:
    """Fit the calibration and thresholds on ``validation``; measure both sets with them."""
    scale, bias = detection.fit_calibration(
        validation.logits, validation.targets, validation.mask, activation
    )
    calibrated = activated(validation.logits, activation, scale, bias)
    thresholds = choose(calibrated, validation, params)
    values = thresholds.values
    test_scores = activated(test.logits, activation, scale, bias)
    ap = detection.class_average_precision(test_scores, test.targets, test.mask)
    per_class = [
        {
            "label": label,
            "ap": round(ap[i], 6) if i in ap else "",
            "threshold": round(float(values[i]), 6),
            "rule": thresholds.classes[i].rule,
            "val_precision": round(thresholds.classes[i].precision, 6),
            "val_recall": round(thresholds.classes[i].recall, 6),
        }
        for i, label in enumerate(labels)
    ]
    return FieldResult(
        activation=activation,
        scale=scale,
        bias=bias,
        thresholds=thresholds,
        metrics=measure(test, activation, scale, bias, values),
        validation=measure(validation, activation, scale, bias, values),
        per_class=per_class,
    )


def secondary_species(prepared_dir: Path, labels: Sequence[str]) -> dict[str, list[int]]:
    """Recording id -> class indices of its background species (``also``), for masking."""
    index = {label: i for i, label in enumerate(labels)}
    return {
        row.id: [index[label] for label in row.also_labels if label in index]
        for row in read_manifest(manifest_path(prepared_dir))
        if row.also_labels
    }


def background_rows(prepared_dir: Path, split: str) -> list[ManifestRow]:
    return [row for row in read_manifest(background_manifest_path(prepared_dir)) if row.split == split]
