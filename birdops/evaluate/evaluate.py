"""Evaluate trained variants at clip and recording level, write their metrics and pick the best one.

For each saved classifier (``models/<variant>``):

- *clip level*: the logits of the cached clips of its feature preset (``load_split``), on the test
  split and on the validation split;
- *recording level*: every test recording of the manifest is decoded whole at the front end's sample
  rate, cut into sliding windows (``window_seconds``, default the model's clip length, every
  ``hop_seconds``), classified by ``WaveformClassifier(frontend, model)`` in batches, and the windows'
  softmax probabilities are averaged per recording. Recordings that cannot be decoded are skipped,
  logged with the reason, and counted.

- *field*: calibration and per-species thresholds fitted on validation windows, and detection metrics
  on the test soundscapes and test background recordings (:mod:`birdops.evaluate.field`).

Window scores are the model's activation of its logits (:func:`birdops.scores.scores`: a softmax for
the report's closed-set models, a sigmoid per species for those trained against background audio);
a recording's are their mean over its windows.

Outputs, under ``out_dir`` (:mod:`birdops.evaluate.layout`): ``<variant>.json`` (the headline, the
same few keys for every variant, for ``dvc metrics show`` and ``diff``), ``eval/<variant>/``
(``details.json`` with everything measured, per-class tables, DVC confusion data, PNG plots,
``calibration.json``), ``eval/comparisons.json`` and the long tables DVC's plots read, and
``best.json``: the variant with the highest *validation* ``select_metric`` (the test split never
chooses a model), with how it was chosen in ``eval/selection.json``.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from birdops import metrics
from birdops.audio import AudioError, load_audio
from birdops.config import EvaluateParams
from birdops.contracts import (
    BEST_FILE,
    CALIBRATION_FILE,
    EVAL_DIR,
    Best,
    ClassifierInfo,
    PathEscapeError,
    labels_path,
    manifest_path,
    read_labels,
    read_manifest,
    write_best,
)
from birdops.evaluate import field, layout, plots, uncertainty
from birdops.features.frontend import FrontEnd
from birdops.features.shards import Clips, load_split
from birdops.files import write_csv_atomic, write_json_atomic
from birdops.models.checkpoint import SavedClassifier, load_classifier
from birdops.models.classifier import WaveformClassifier
from birdops.models.factory import SpectrogramClassifier
from birdops.scores import scores as activated
from birdops.windows import even_windows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recording:
    """A manifest row to score: its id and true class index, with its audio file resolved under the raw
    folder (:meth:`birdops.contracts.ManifestRow.audio_path`)."""

    id: str
    path: Path
    label_index: int


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


# ---------------------------------------------------------------------------------------- inputs


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


# ------------------------------------------------------------------------------------ clip level
@torch.no_grad()
def clip_logits(
    model: nn.Module, features: Clips, batch_size: int, device: torch.device, desc: str = "clips"
) -> np.ndarray:
    """Logits ``(N, C)`` float32 of cached clips ``features (N, F, T)`` (float16 is fine)."""
    outputs = []
    for start in tqdm(range(0, len(features), batch_size), desc=desc, unit="batch", leave=False):
        batch = torch.from_numpy(np.asarray(features[start : start + batch_size], dtype=np.float32))
        outputs.append(model(batch.to(device)).float().cpu().numpy())  # (B, C)
    return np.concatenate(outputs)


def evaluate_clips(
    model: nn.Module, info: ClassifierInfo, lms_dir: Path, split: str, batch_size: int, device: torch.device
) -> Scored:
    """Logits and labels of the cached clips of ``split`` in the model's feature preset."""
    cached = load_split(lms_dir, info.feature_preset, split)
    if len(cached.labels) == 0:
        raise ValueError(f"{lms_dir}/{info.feature_preset}: the {split} split has no cached clips")
    if tuple(cached.features.shape[1:]) != (info.n_bins, info.n_frames):
        raise ValueError(
            f"cached {split} clips are {tuple(cached.features.shape[1:])}, "
            f"model {info.variant!r} expects {(info.n_bins, info.n_frames)}"
        )
    logits = clip_logits(model, cached.features, batch_size, device, desc=f"{info.variant} {split} clips")
    return Scored(logits, np.asarray(cached.labels, dtype=np.int64), np.asarray(cached.ids))


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


@torch.no_grad()
def recording_probabilities(
    classifier: nn.Module,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    num_recordings: int,
    num_classes: int,
    device: torch.device,
    activation: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean window score (``activation`` of the logits) of each recording ``(R, C)`` and the window
    count ``(R,)`` (0, and a row of zeros, for a recording that yielded no window)."""
    sums = np.zeros((num_recordings, num_classes), dtype=np.float64)
    counts = np.zeros(num_recordings, dtype=np.int64)
    for windows, owners in batches:
        logits = classifier(torch.from_numpy(windows).to(device))  # (B, C)
        probs = activated(logits.float().cpu().numpy(), activation)
        np.add.at(sums, owners, probs)
        np.add.at(counts, owners, 1)
    means = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
    return means, counts


def window_seconds_for(info: ClassifierInfo, frontend: FrontEnd, params: EvaluateParams) -> float:
    """The window in seconds: ``params.window_seconds``, else the model's clip length. Raises
    ValueError when the front end would give another frame count than the model was built for."""
    window_seconds = params.window_seconds or info.clip_seconds
    num_frames = frontend.spec.clip_shape(window_seconds).n_frames
    if num_frames != info.n_frames:
        raise ValueError(
            f"a {window_seconds} s window gives {num_frames} frames, model {info.variant!r} takes "
            f"{info.n_frames} (its clips are {info.clip_seconds} s); set evaluate.window_seconds to null"
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
    """Recording-level probabilities (windows averaged) of the decodable ``recordings``."""
    classifier = WaveformClassifier(frontend, model).to(device).eval()
    rate_hz = frontend.spec.sample_rate_hz
    window_seconds = window_seconds_for(info, frontend, params)
    skipped: list[Skipped] = []
    desc = f"{info.variant} test recordings"
    windows = recording_windows(recordings, rate_hz, window_seconds, params.hop_seconds, skipped, desc)
    probs, counts = recording_probabilities(
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


# --------------------------------------------------------------------------------------- variant
@dataclass(frozen=True)
class Inputs:
    """Where the evaluation reads its data."""

    raw_dir: Path
    background_dir: Path
    prepared_dir: Path
    lms_dir: Path
    soundscapes_dir: Path


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
            classifier,
            waves,
            rate_hz,
            window_seconds,
            params.field,
            params.hop_seconds,
            len(labels),
            params.batch_size,
            device,
        )

    def soundscapes(split: str) -> field.Windows:
        return scored(field.soundscape_waves(inputs.soundscapes_dir, split, labels, rate_hz))

    secondary = field.secondary_species(inputs.prepared_dir, labels)
    clips = field.clip_windows(
        saved.model,
        inputs.lms_dir,
        info.feature_preset,
        "val",
        secondary,
        len(labels),
        params.batch_size,
        device,
    )
    validation = field.Windows.join([clips, soundscapes("val")])
    background = field.background_rows(inputs.prepared_dir, "test")
    test = field.Windows.join(
        [soundscapes("test"), scored(field.background_waves(background, inputs.background_dir, rate_hz))]
    )
    return field.fit_and_measure(validation, test, info.activation, labels, params.field)


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


# ------------------------------------------------------------------------------------- selection
def compare_generations(results: Mapping[str, VariantEvaluation], params: EvaluateParams) -> dict[str, Any]:
    """Each variant against the one before it (in evaluation order), paired on the same test clips:
    ``{"<b>_vs_<a>": {metric_diff, metric_diff_low, metric_diff_high, metric_p_value, metric_verdict}}``
    (``b - a``; the verdict says whether the 95% interval holds 0)."""
    names = list(results)
    out: dict[str, Any] = {}
    for a, b in itertools.pairwise(names):
        first, second = results[a].test_clip, results[b].test_clip
        order_a, order_b = _clip_order(first), _clip_order(second)
        if set(order_a) != set(order_b):
            log.warning("%s and %s were tested on different clips: no paired comparison", a, b)
            continue
        index_b = np.array([order_b[key] for key in order_a])
        diffs = uncertainty.paired(
            metrics.predictions(first.scores),
            metrics.predictions(second.scores)[index_b],
            first.labels,
            first.groups,
            first.scores.shape[1],
            params.bootstrap_draws,
            params.bootstrap_seed,
        )
        row: dict[str, Any] = {"n_test_clips": len(first.labels), "n_test_recordings": len(set(first.groups))}
        for metric, d in diffs.items():
            row |= {
                f"{metric}_diff": d.value,
                f"{metric}_diff_low": d.interval.low,
                f"{metric}_diff_high": d.interval.high,
                f"{metric}_p_value": d.p_value,
                f"{metric}_verdict": verdict(d),
            }
        out[f"{b}_vs_{a}"] = row
    return out


def verdict(difference: uncertainty.Difference) -> str:
    if difference.within_noise:
        return "within noise"
    return "better" if difference.value > 0 else "worse"


def _clip_order(scored: Scored) -> dict[tuple[str, int], int]:
    """(recording, occurrence) -> row: the same clip of two variants' caches, whatever the row order."""
    seen: dict[str, int] = {}
    order = {}
    for row, group in enumerate(scored.groups.tolist()):
        seen[group] = seen.get(group, -1) + 1
        order[(group, seen[group])] = row
    return order


# validation metrics that break a tie on the selection metric, in this order
TIE_BREAKERS: tuple[str, ...] = ("f1_macro", "map", "accuracy")


def select_best(summaries: Mapping[str, Mapping[str, Any]], metric: str) -> dict[str, Any]:
    """The variant with the highest validation ``metric`` (:func:`validation_key`) of its details.

    Ties (common on small validation sets) are broken by the other validation metrics of
    ``TIE_BREAKERS``, then by the order of ``summaries`` (the first wins). Returns the selection
    record ``{"variant", "metric", "value", "candidates", "decided_by"}``; test metrics are never read.
    """
    if not summaries:
        raise ValueError("no evaluated variant to choose from")
    order = (metric, *(m for m in TIE_BREAKERS if m != metric))

    def key(name: str) -> tuple[float, ...]:
        return tuple(validation_value(summaries[name], m) for m in order)

    best = max(summaries, key=key)  # max keeps the first of equal keys
    candidates = {name: validation_value(summary, metric) for name, summary in summaries.items()}
    tied = [name for name, value in candidates.items() if value == candidates[best]]
    if all(value == 0.0 for value in candidates.values()):
        decided_by = "order (every variant scores 0)"
        log.warning(
            "every variant has %s = 0: %s is chosen by order alone, not by quality; "
            "the models have not learnt to separate the classes",
            validation_key(metric),
            best,
        )
    elif len(tied) > 1:
        splitter = next((m for m in order[1:] if len({key(n)[order.index(m)] for n in tied}) > 1), None)
        decided_by = f"tie on {metric} between {', '.join(tied)}: " + (
            f"broken by val_clip.{splitter}" if splitter else "equal on every tie-breaker, the first in order"
        )
        log.warning("%s", decided_by)
    else:
        decided_by = metric
    return {
        "variant": best,
        "metric": validation_key(metric),
        "value": candidates[best],
        "candidates": candidates,
        "decided_by": decided_by,
    }


def validation_key(metric: str) -> str:
    """Where a selection metric lives in a variant's details: ``val_detection.cmap`` for the detection
    cmAP, ``val_clip.<metric>`` for a clip metric."""
    return f"{layout.validation_section(metric)}.{metric}"


def validation_value(summary: Mapping[str, Any], metric: str) -> float:
    return float(summary[layout.validation_section(metric)][metric])


# ------------------------------------------------------------------------------- tables for plots
def test_metric_rows(summaries: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``eval/test_metrics.csv``: one row per variant and headline test metric (``variant, metric,
    value, low, high``), with the 95% interval where one was measured (clip accuracy and F1 macro)
    and empty bounds elsewhere: the comparison DVC's plots draw."""
    rows = []
    for variant, details in summaries.items():
        ci = details.get("test_clip_ci95", {})
        for name, value in layout.headline(details).items():
            low, high = ci.get(f"{name}_low", ""), ci.get(f"{name}_high", "")
            rows.append({"variant": variant, "metric": name, "value": value, "low": low, "high": high})
    return rows


def paired_rows(comparisons: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``eval/paired.csv``: each paired comparison's difference and 95% interval per metric
    (``comparison, metric, difference, low, high, verdict``), for DVC's plots."""
    rows = []
    for pair, found in comparisons.items():
        newer, older = pair.split("_vs_")
        for metric in ("accuracy", "f1_macro"):
            rows.append(
                {
                    "comparison": f"{newer} - {older}",
                    "metric": metric,
                    "difference": found[f"{metric}_diff"],
                    "low": found[f"{metric}_diff_low"],
                    "high": found[f"{metric}_diff_high"],
                    "verdict": found[f"{metric}_verdict"],
                }
            )
    return rows


def write_tables(
    summaries: Mapping[str, Mapping[str, Any]], comparisons: Mapping[str, Mapping[str, Any]], folder: Path
) -> None:
    """``comparisons.json`` and the long tables of :func:`test_metric_rows` and :func:`paired_rows`."""
    write_json_atomic(folder / layout.COMPARISONS_FILE, comparisons)
    fields = ["variant", "metric", "value", "low", "high"]
    write_csv_atomic(folder / layout.TEST_METRICS_FILE, fields, test_metric_rows(summaries))
    fields = ["comparison", "metric", "difference", "low", "high", "verdict"]
    write_csv_atomic(folder / layout.PAIRED_FILE, fields, paired_rows(comparisons))


def evaluate_models(
    model_dirs: Sequence[Path],
    inputs: Inputs,
    out_dir: Path,
    params: EvaluateParams,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Evaluate every model folder (named after its variant, e.g. ``models/full``), write the outputs
    under ``out_dir`` and return the selection record (``eval/selection.json``)."""
    device = torch.device(device)
    labels = read_labels(labels_path(inputs.prepared_dir))
    recordings = read_recordings(inputs.prepared_dir, inputs.raw_dir, "test")
    summaries: dict[str, dict[str, Any]] = {}
    results: dict[str, VariantEvaluation] = {}
    for model_dir in model_dirs:
        name = model_dir.name
        results[name] = evaluate_variant(name, model_dir, inputs, recordings, labels, params, device)
        summaries[name] = write_variant(results[name], out_dir, params)
        log.info("%s: %s", name, json.dumps(layout.headline(summaries[name])))
    comparisons = compare_generations(results, params)
    write_tables(summaries, comparisons, out_dir / EVAL_DIR)
    for pair, found in comparisons.items():
        log.info(
            "%s: test accuracy %+.4f (95%% interval %+.4f..%+.4f, p %.3g): %s",
            pair,
            found["accuracy_diff"],
            found["accuracy_diff_low"],
            found["accuracy_diff_high"],
            found["accuracy_p_value"],
            found["accuracy_verdict"],
        )
    best = select_best(summaries, params.select_metric)
    write_json_atomic(out_dir / EVAL_DIR / layout.SELECTION_FILE, best)
    write_best(out_dir / BEST_FILE, Best(best["variant"], params.select_metric, best["value"]))
    log.info("best variant by %s: %s (%.4f)", best["metric"], best["variant"], best["value"])
    return best
