"""Scoring one trained variant at clip, recording and field level: torch only runs the model.

For each saved classifier (``models/<variant>``):

- *clip level*: the logits of the cached clips of its feature preset (``load_split``), on the test
  split and on the validation split;
- *recording level*: every test recording of the manifest is decoded whole at the front end's sample
  rate, cut into even windows (:func:`birdops.windows.even_windows`: ``window_seconds``, default the
  model's clip length, every ``hop_seconds``), classified by ``WaveformClassifier(frontend, model)``
  in batches, and each recording's score is the mean of its windows' scores. Recordings that cannot
  be decoded are skipped, logged with the reason, and counted;
- *field*: calibration and per-species thresholds fitted on validation windows, and detection metrics
  on the test soundscapes and test background recordings (:mod:`birdops.evaluate.field`).

The model gives logits (:func:`logits_of`); everything after them is numpy and the service's own
arithmetic: a window's scores are the model's activation of its logits (:func:`birdops.scores.scores`,
in float64: a softmax for the report's closed-set models, a sigmoid per species for those trained
against background audio), a recording's are their mean over its windows
(:func:`birdops.scores.aggregate`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from birdops.audio import AudioError, load_audio
from birdops.config import EvaluateParams
from birdops.contracts import (
    ClassifierInfo,
    PathEscapeError,
    manifest_path,
    read_manifest,
)
from birdops.evaluate import field
from birdops.evaluate.results import Scored, Skipped, VariantEvaluation
from birdops.features.frontend import FrontEnd
from birdops.features.shards import Clips, load_split
from birdops.models.checkpoint import SavedClassifier, load_classifier
from birdops.models.classifier import WaveformClassifier
from birdops.models.factory import SpectrogramClassifier
from birdops.scores import aggregate, scores
from birdops.windows import even_windows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """Where the evaluation reads its data."""

    raw_dir: Path
    background_dir: Path
    prepared_dir: Path
    lms_dir: Path
    soundscapes_dir: Path


@dataclass(frozen=True)
class Recording:
    """A manifest row to score: its id and true class index, with its audio file resolved under the raw
    folder (:meth:`birdops.contracts.ManifestRow.audio_path`)."""

    id: str
    path: Path
    label_index: int


def read_recordings(prepared_dir: Path, raw_dir: Path, split: str = "test") -> list[Recording]:
    """The manifest's recordings of ``split``, with their audio paths under ``raw_dir``."""
    recordings = []
    for row in read_manifest(manifest_path(prepared_dir)):
        if row.split != split:
            continue
        try:
            recordings.append(Recording(row.id, row.audio_path(raw_dir), row.label_index))
        except PathEscapeError as err:
            log.warning("%s; left out", err)
    return recordings


# ------------------------------------------------------------------------------------------ logits
@torch.no_grad()
def forward(net: nn.Module, batch: np.ndarray, device: torch.device) -> np.ndarray:
    """``net``'s logits ``(B, C)`` float32 of one batch of inputs (float16 is fine)."""
    inputs = torch.from_numpy(np.asarray(batch, dtype=np.float32))
    out: np.ndarray = net(inputs.to(device)).float().cpu().numpy()
    return out


def logits_of(
    net: nn.Module,
    inputs: np.ndarray | Clips,
    batch_size: int,
    device: torch.device,
    desc: str | None = None,
) -> np.ndarray:
    """``net``'s logits ``(N, C)`` float32 of ``inputs`` (cached features ``(N, F, T)`` for the model,
    or waveform windows ``(N, S)`` for the model behind its front end), ``batch_size`` at a time; a
    progress bar when ``desc`` names one."""
    starts = range(0, len(inputs), batch_size)
    batches = tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None)
    out = [forward(net, inputs[start : start + batch_size], device) for start in batches]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


# ------------------------------------------------------------------------------------ clip level
def evaluate_clips(
    model: nn.Module, info: ClassifierInfo, lms_dir: Path, split: str, batch_size: int, device: torch.device
) -> Scored:
    """Logits and labels of the cached clips of ``split`` in the model's feature preset."""
    cached = load_split(lms_dir, info.feature_preset, split)
    if len(cached.labels) == 0:
        raise ValueError(f"{lms_dir}/{info.feature_preset}: the {split} split has no cached clips")
    check_clip_shape(tuple(cached.features.shape[1:]), info, split)
    logits = logits_of(model, cached.features, batch_size, device, desc=f"{info.variant} {split} clips")
    return Scored(logits, np.asarray(cached.labels, dtype=np.int64), np.asarray(cached.ids))


def check_clip_shape(shape: tuple[int, ...], info: ClassifierInfo, split: str) -> None:
    """ValueError when cached clips of ``shape`` ``(n_bins, n_frames)`` are not what the model takes."""
    if shape != info.shape.features:
        raise ValueError(
            f"cached {split} clips are {shape}, model {info.variant!r} expects {info.shape.features}"
        )


# ------------------------------------------------------------------------------- recording level
def recording_windows(
    recordings: Sequence[Recording],
    sample_rate_hz: int,
    window_seconds: float,
    hop_seconds: float,
    skipped: list[Skipped],
    desc: str = "recordings",
) -> Iterator[tuple[int, np.ndarray]]:
    """``(recording index, windows (N, S))`` for each decodable recording, its even windows
    (:func:`birdops.windows.even_windows`); undecodable ones are logged and appended to ``skipped``."""
    for index, recording in enumerate(tqdm(recordings, desc=desc, unit="rec", leave=False)):
        try:
            wave = load_audio(recording.path, sample_rate_hz)
        except AudioError as err:
            log.warning("recording %s skipped: %s", recording.id, err)
            skipped.append(Skipped(recording.id, str(err)))
            continue
        windows, _ = even_windows(wave, sample_rate_hz, window_seconds, hop_seconds)
        yield index, windows


def batch_windows(
    items: Iterable[tuple[int, np.ndarray]], batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Regroup per-recording windows into batches ``(windows (B, S), owners (B,))`` of at most
    ``batch_size``, across recording boundaries, so short recordings still fill a batch."""
    pending: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    count = 0
    for index, windows in items:
        for start in range(0, len(windows), batch_size):
            part = windows[start : start + batch_size]
            pending.append(part)
            owners.append(np.full(len(part), index, dtype=np.int64))
            count += len(part)
            while count >= batch_size:
                stacked, who = np.concatenate(pending), np.concatenate(owners)
                yield stacked[:batch_size], who[:batch_size]
                pending, owners = [stacked[batch_size:]], [who[batch_size:]]
                count -= batch_size
    if count:
        yield np.concatenate(pending), np.concatenate(owners)


def per_recording(batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[int, np.ndarray]]:
    """``(recording index, window scores (N, C))`` of each recording, from batches ``(scores (B, C),
    owners (B,))`` that hold the windows in recording order (:func:`batch_windows`'s)."""
    current = -1  # the recording being gathered
    parts: list[np.ndarray] = []  # its rows so far
    for batch_scores, owners in batches:
        for owner in dict.fromkeys(owners.tolist()):  # this batch's recordings, in order
            if owner != current and parts:
                yield current, np.concatenate(parts)
                parts = []
            current = owner
            parts.append(batch_scores[owners == owner])
    if parts:
        yield current, np.concatenate(parts)


def recording_scores(
    classifier: nn.Module,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    num_recordings: int,
    num_classes: int,
    device: torch.device,
    activation: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Each recording's score ``(R, C)`` float64, the mean (:func:`birdops.scores.aggregate`) of its
    windows' scores (:func:`birdops.scores.scores` of their logits), and its window count ``(R,)``
    (0, and a row of zeros, for a recording that yielded no window)."""
    means = np.zeros((num_recordings, num_classes), dtype=np.float64)
    counts = np.zeros(num_recordings, dtype=np.int64)
    window_scores = ((scores(forward(classifier, w, device), activation), who) for w, who in batches)
    for index, found in per_recording(window_scores):
        means[index], counts[index] = aggregate(found), len(found)
    return means, counts


def window_seconds_for(info: ClassifierInfo, frontend: FrontEnd, params: EvaluateParams) -> float:
    """The window in seconds: ``params.window_seconds``, else the model's clip length. Raises
    ValueError when the front end would give another frame count than the model was built for."""
    window_seconds = params.window_seconds or info.clip_seconds
    num_frames = frontend.spec.clip_shape(window_seconds).n_frames
    if num_frames != info.shape.n_frames:
        raise ValueError(
            f"a {window_seconds} s window gives {num_frames} frames, model {info.variant!r} takes "
            f"{info.shape.n_frames} (its clips are {info.clip_seconds} s); "
            "set evaluate.window_seconds to null"
        )
    return window_seconds


def evaluate_recordings(
    model: SpectrogramClassifier,
    frontend: FrontEnd,
    info: ClassifierInfo,
    recordings: Sequence[Recording],
    params: EvaluateParams,
    device: torch.device,
) -> tuple[Scored, list[Skipped]]:
    """Recording-level scores (windows averaged) of the decodable ``recordings``."""
    classifier = WaveformClassifier(frontend, model).to(device).eval()
    rate_hz = frontend.spec.sample_rate_hz
    window_seconds = window_seconds_for(info, frontend, params)
    skipped: list[Skipped] = []
    desc = f"{info.variant} test recordings"
    windows = recording_windows(recordings, rate_hz, window_seconds, params.hop_seconds, skipped, desc)
    probs, counts = recording_scores(
        classifier,
        batch_windows(windows, params.batch_size),
        len(recordings),
        info.num_classes,
        device,
        info.activation,
    )
    kept = counts > 0
    if not kept.any():
        raise ValueError(f"none of the {len(recordings)} test recordings could be decoded")
    if skipped:
        log.warning("%s: %d of %d test recordings skipped", info.variant, len(skipped), len(recordings))
    labels = np.array([r.label_index for r in recordings], dtype=np.int64)
    ids = np.array([r.id for r in recordings])
    return Scored(probs[kept], labels[kept], ids[kept]), skipped


# ------------------------------------------------------------------------------------------ field
def evaluate_field(
    saved: SavedClassifier,
    inputs: Inputs,
    labels: Sequence[str],
    params: EvaluateParams,
    device: torch.device,
) -> field.FieldResult:
    """Calibration and thresholds on the validation windows, detection metrics on the test windows
    (see :mod:`birdops.evaluate.field`)."""
    assert saved.frontend is not None
    info, classifier = saved.info, saved.waveform_classifier().to(device)
    rate_hz = saved.frontend.spec.sample_rate_hz
    window_seconds = window_seconds_for(info, saved.frontend, params)

    def scored(waves: Iterable[tuple[np.ndarray, Sequence[tuple[float, float, int]]]]) -> field.Windows:
        return field.recording_windows(
            lambda windows: logits_of(classifier, windows, params.batch_size, device),
            waves,
            rate_hz,
            window_seconds,
            params.field,
            params.hop_seconds,
            len(labels),
        )

    def soundscapes(split: str) -> field.Windows:
        return scored(field.soundscape_waves(inputs.soundscapes_dir, split, labels, rate_hz))

    secondary = field.secondary_species(inputs.prepared_dir, labels)
    clips = field.clip_windows(
        lambda features: logits_of(saved.model, features, params.batch_size, device),
        inputs.lms_dir,
        info.feature_preset,
        "val",
        secondary,
        len(labels),
    )

    def background(split: str) -> field.Windows:
        rows = field.background_rows(inputs.prepared_dir, split)
        return scored(field.background_waves(rows, inputs.background_dir, rate_hz))

    validation = field.Windows.join([clips, soundscapes("val"), background("val")])
    test = field.Windows.join([soundscapes("test"), background("test")])
    return field.fit_and_measure(validation, test, info.activation, labels, params.field)


# --------------------------------------------------------------------------------------- variant
def evaluate_variant(
    name: str,
    model_dir: Path,
    inputs: Inputs,
    recordings: Sequence[Recording],
    labels: Sequence[str],
    params: EvaluateParams,
    device: torch.device,
) -> VariantEvaluation:
    """Clip-level (test, val), recording-level (test) and field scores of the classifier in ``model_dir``."""
    saved = load_classifier(model_dir, device, labels=labels)
    model, info, frontend = saved.model, saved.info, saved.frontend
    assert frontend is not None  # loaded with its front end, the default
    test_clip = evaluate_clips(model, info, inputs.lms_dir, "test", params.batch_size, device)
    val_clip = evaluate_clips(model, info, inputs.lms_dir, "val", params.batch_size, device)
    test_recording, skipped = evaluate_recordings(model, frontend, info, recordings, params, device)
    found = evaluate_field(saved, inputs, labels, params, device)
    return VariantEvaluation(name, tuple(labels), test_clip, val_clip, test_recording, found, skipped)
