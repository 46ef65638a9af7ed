"""The exported model as ``birdops predict`` serves it, on held-out audio: does it stay quiet on audio
without the species, and still find them when a site's noise covers them?

Everything runs through the served path -- :class:`~birdops.serve.inference.Classifier` on the
``.onnx`` file, its calibrated scores and the per-species thresholds of its metadata, windows of the
model's length without overlap (``birdops predict``'s defaults) -- on recordings no model was trained,
calibrated or chosen on:

- *background*: every window of every test background recording (sites the training never heard);
  the share of windows with a species row is what a user would wade through as false detections;
- *clean*: every test recording; one is recalled when a window names its species;
- *mixed*: every test recording over a test background recording (drawn per recording from
  ``seed``, repeated to its length) at ``snr_db``: the recording's mean power over the background's;
- the same two recalls by the ranking alone (``*_top1_file_recall``): a recording counts when its
  species is some window's top score, whatever the thresholds. Where the thresholded recall over
  background falls further than this one, the species' scores fell under the threshold while the
  model still ranked the species first.

numpy, soundfile and onnxruntime only, like the rest of serving.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from birdops.audio import AudioError, load_audio
from birdops.config import FieldCheckParams
from birdops.contracts import (
    ManifestRow,
    PathEscapeError,
    background_manifest_path,
    manifest_path,
    read_manifest,
)
from birdops.mixing import mix_at_snr, noise_segment
from birdops.serve.detect import select
from birdops.serve.inference import Classifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detections:
    """Per window, whether any species passed its threshold, whether a given species did, and the
    species with the top score."""

    flagged: np.ndarray  # (N,) bool
    found: np.ndarray  # (N, C) bool
    top: np.ndarray  # (N,) int: the index of the window's top-scoring species


def detections(classifier: Classifier, wave: np.ndarray, hop_seconds: float | None = None) -> Detections:
    """What ``birdops predict``'s defaults report for ``wave`` (:func:`birdops.serve.detect.select`
    with no option: the model's thresholds, or its top species per window when it has none)."""
    result = classifier.predict_windows(wave, hop_seconds)
    scoring, labels = classifier.metadata.scoring, classifier.labels
    selection, _ = select(scoring, labels, 1 if scoring.thresholds is None else None)
    index = {label: i for i, label in enumerate(labels)}
    found = np.zeros(result.scores.shape, dtype=bool)
    for row, picked in enumerate(selection.pick(result.scores, labels)):
        found[row, [index[s.species] for s in picked]] = True
    return Detections(np.asarray(found.any(axis=1)), found, np.argmax(result.scores, axis=1))


def _decoded(row: ManifestRow, folder: Path, sample_rate_hz: int) -> np.ndarray | None:
    try:
        return load_audio(row.audio_path(folder), sample_rate_hz)
    except (AudioError, PathEscapeError) as err:
        log.warning("%s left out of the field check: %s", row.local_path, err)
        return None


def check(
    classifier: Classifier,
    raw_dir: Path,
    background_dir: Path,
    prepared_dir: Path,
    params: FieldCheckParams,
    split: str = "test",
) -> dict[str, Any]:
    """The field check's figures (see the module docstring), JSON-ready; ``split`` ``val``: the same
    figures on the validation recordings and background (to compare recipes without reading test)."""
    rate = classifier.sample_rate_hz
    labels = {label: i for i, label in enumerate(classifier.labels)}
    recordings = [
        r for r in read_manifest(manifest_path(prepared_dir)) if r.split == split and r.label in labels
    ]
    background = [r for r in read_manifest(background_manifest_path(prepared_dir)) if r.split == split]
    beds = [w for w in (_decoded(r, background_dir, rate) for r in background) if w is not None]
    if not beds or not recordings:
        raise ValueError(f"{prepared_dir}: the field check needs {split} recordings and {split} background")
    flagged = np.concatenate([detections(classifier, bed, params.hop_seconds).flagged for bed in beds])
    clean, mixed = _recall(classifier, recordings, raw_dir, beds, labels, params)
    clean_top1, mixed_top1 = np.mean([r.top1 for r in clean]), np.mean([r.top1 for r in mixed])
    clean_found, mixed_found = np.mean([r.found for r in clean]), np.mean([r.found for r in mixed])
    return {
        "background_windows": len(flagged),
        "background_windows_flagged": float(flagged.mean()),
        "background_recordings": len(beds),
        f"{split}_recordings": len(clean),
        "clean_file_recall": float(clean_found),
        "mixed_file_recall": float(mixed_found),
        "mixed_snr_db": params.snr_db,
        "mixed_to_clean_recall": float(mixed_found / clean_found) if clean_found > 0 else 0.0,
        "clean_top1_file_recall": float(clean_top1),
        "mixed_top1_file_recall": float(mixed_top1),
        "mixed_to_clean_top1_recall": float(mixed_top1 / clean_top1) if clean_top1 > 0 else 0.0,
    }


@dataclass(frozen=True)
class _Recalled:
    """One recording's outcome: a window named its species (``found``); its species was some window's
    top score (``top1``)."""

    found: bool
    top1: bool

    @classmethod
    def of(cls, found: Detections, label: int) -> _Recalled:
        return cls(bool(found.found[:, label].any()), bool((found.top == label).any()))


def _recall(
    classifier: Classifier,
    recordings: Sequence[ManifestRow],
    raw_dir: Path,
    beds: Sequence[np.ndarray],
    labels: dict[str, int],
    params: FieldCheckParams,
) -> tuple[list[_Recalled], list[_Recalled]]:
    """Per decodable test recording: whether a window names its species, and whether its species is
    some window's top score, clean and over background."""
    clean, mixed = [], []
    for row in recordings:
        wave = _decoded(row, raw_dir, classifier.sample_rate_hz)
        if wave is None:
            continue
        rng = np.random.default_rng([params.seed, zlib.crc32(row.id.encode("utf-8"))])
        bed = noise_segment(beds[int(rng.integers(len(beds)))], len(wave), rng)
        label = labels[row.label]
        clean.append(_Recalled.of(detections(classifier, wave, params.hop_seconds), label))
        noisy = mix_at_snr(wave, bed, params.snr_db)
        mixed.append(_Recalled.of(detections(classifier, noisy, params.hop_seconds), label))
    return clean, mixed
