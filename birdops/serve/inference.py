"""Inference with an exported birdops model: onnxruntime, numpy and soundfile only -- never torch.

The ``.onnx`` file describes itself (``docs/architecture.md``, "Exported model"): input ``waveform``
float32 ``[batch, samples]``, output ``logits`` float32 ``[batch, classes]``, and ``birdops.*``
metadata props with the labels, sample rate, window length and feature settings. Nothing else is read.

A recording is decoded at the model's sample rate, cut into even windows of the model's length that
start every ``hop_seconds`` (the last one zero-padded: :mod:`birdops.windows`), run in batches, and each
window's logits become class probabilities (:func:`birdops.scores.softmax`). A file's score for a class
is the mean of its windows' probabilities (:func:`birdops.scores.aggregate`). Files and uploads are
streamed: decoded, resampled and cut into windows block by block
(:class:`birdops.windows.StreamedWindows`), so memory does not grow with their length; the windows,
batches and scores are exactly those of the whole decoded array.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from birdops.audio import stream_audio, stream_bytes
from birdops.scores import aggregate, softmax
from birdops.windows import StreamedWindows, even_batches, even_hop_seconds

log = logging.getLogger(__name__)

INPUT_NAME = "waveform"
OUTPUT_NAME = "logits"
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
Device = Literal["auto", "cpu", "cuda"]

# metadata_props keys of the exported model (written by birdops.export.onnx_export)
LABELS_KEY = "birdops.labels"
SAMPLE_RATE_KEY = "birdops.sample_rate_hz"
WINDOW_KEY = "birdops.window_seconds"
FEATURES_KEY = "birdops.features"
VARIANT_KEY = "birdops.variant"
MODEL_SHA256_KEY = "birdops.model_sha256"
REQUIRED_KEYS = (LABELS_KEY, SAMPLE_RATE_KEY, WINDOW_KEY, FEATURES_KEY, VARIANT_KEY, MODEL_SHA256_KEY)


class ModelError(ValueError):
    """A model file cannot be served: unreadable, not a birdops export, or inconsistent metadata."""


# ---------------------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class ModelMetadata:
    """What an exported model says about itself; ``to_props``/``from_props`` are the file format."""

    labels: tuple[str, ...]  # class names in logit order
    sample_rate_hz: int  # of the waveform input
    window_seconds: float  # the input's fixed length, in seconds
    features: Mapping[str, Any]  # the front end's FeatureSpec dict (documentation; the graph computes it)
    variant: str
    model_sha256: str  # SHA-256 of the trained weights file the export holds (models/<variant>/)

    @property
    def window_samples(self) -> int:
        return round(self.window_seconds * self.sample_rate_hz)

    def to_props(self) -> dict[str, str]:
        """The ``birdops.*`` metadata props, every value a string (JSON for lists and dicts)."""
        return {
            LABELS_KEY: json.dumps(list(self.labels)),
            SAMPLE_RATE_KEY: str(self.sample_rate_hz),
            WINDOW_KEY: repr(float(self.window_seconds)),
            FEATURES_KEY: json.dumps(dict(self.features), sort_keys=True),
            VARIANT_KEY: self.variant,
            MODEL_SHA256_KEY: self.model_sha256,
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelMetadata:
        """Parse the metadata props; :class:`ModelError` names the missing or malformed key."""
        missing = [key for key in REQUIRED_KEYS if key not in props]
        if missing:
            raise ModelError(f"{source}: not a birdops export, metadata lacks {', '.join(missing)}")
        try:
            labels = json.loads(props[LABELS_KEY])
            if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
                raise ValueError(f"{LABELS_KEY} must be a non-empty JSON list of strings")
            if len(set(labels)) != len(labels):
                raise ValueError(f"{LABELS_KEY} has duplicate labels")
            features = json.loads(props[FEATURES_KEY])
            if not isinstance(features, dict):
                raise ValueError(f"{FEATURES_KEY} must be a JSON object")
            sample_rate_hz = int(props[SAMPLE_RATE_KEY])
            window_seconds = float(props[WINDOW_KEY])
        except ValueError as err:  # json.JSONDecodeError is a ValueError too
            raise ModelError(f"{source}: malformed birdops metadata: {err}") from err
        if sample_rate_hz <= 0 or not window_seconds > 0:
            raise ModelError(f"{source}: sample rate and window length must be positive")
        return cls(
            labels=tuple(labels),
            sample_rate_hz=sample_rate_hz,
            window_seconds=window_seconds,
            features=features,
            variant=props[VARIANT_KEY],
            model_sha256=props[MODEL_SHA256_KEY],
        )


# ------------------------------------------------------------------------------------------ scores
@dataclass(frozen=True)
class SpeciesScore:
    species: str
    score: float  # probability in [0, 1]


@dataclass(frozen=True)
class WindowScores:
    """Per-window class probabilities of one recording."""

    starts_s: np.ndarray  # (N,) window starts, seconds from the start of the recording
    scores: np.ndarray  # (N, C) softmax probabilities, rows sum to 1
    labels: tuple[str, ...]  # (C,)
    window_seconds: float
    duration_s: float  # of the decoded recording

    @property
    def ends_s(self) -> np.ndarray:
        """(N,) window ends; the last, zero-padded window ends with the recording."""
        return np.minimum(self.starts_s + self.window_seconds, self.duration_s)

    def file_scores(self) -> np.ndarray:
        """(C,) the mean probability of each class over the windows."""
        return aggregate(self.scores)

    def file_top(self, k: int) -> list[SpeciesScore]:
        return top_k(self.file_scores(), self.labels, k)

    def window_top(self, k: int, min_score: float = 0.0) -> list[list[SpeciesScore]]:
        """For each window, its ``k`` most probable classes with a score >= ``min_score``."""
        return [top_k(row, self.labels, k, min_score) for row in self.scores]


def top_k(
    probabilities: np.ndarray, labels: Sequence[str], k: int, min_score: float = 0.0
) -> list[SpeciesScore]:
    """The ``k`` highest of ``probabilities (C,)`` with a score >= ``min_score``, best first (ties: lower
    class index first)."""
    order = np.argsort(-probabilities, kind="stable")[: max(k, 0)]
    return [SpeciesScore(labels[i], float(probabilities[i])) for i in order if probabilities[i] >= min_score]


# ---------------------------------------------------------------------------------------- sessions
def providers_for(device: Device) -> list[str]:
    """Execution providers to request: ``auto`` is CUDA first with a CPU fallback (when this
    onnxruntime build has CUDA at all), ``cpu`` and ``cuda`` only that one."""
    if device == "cpu":
        return [CPU_PROVIDER]
    if device == "cuda":
        return [CUDA_PROVIDER, CPU_PROVIDER]
    available = ort.get_available_providers()
    return [p for p in (CUDA_PROVIDER, CPU_PROVIDER) if p in available]


def _ort_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's exception types (plain ``Exception`` subclasses, not RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = (
        "Fail",
        "InvalidArgument",
        "NoSuchFile",
        "InvalidProtobuf",
        "InvalidGraph",
        "NotImplemented",
        "RuntimeException",
    )
    return (*(getattr(state, n) for n in names if hasattr(state, n)), RuntimeError)


@dataclass(frozen=True)
class Classifier:
    """An exported model in an onnxruntime session.

    ``InferenceSession.run`` is thread-safe, so one instance serves concurrent requests.
    """

    session: ort.InferenceSession
    metadata: ModelMetadata
    path: Path
    requested_providers: list[str] = field(default_factory=list)

    @classmethod
    def load(
        cls,
        path: str | Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
    ) -> Classifier:
        """Open ``path``; ``providers`` default to CUDA first, CPU as the fallback
        (:func:`providers_for` ``("auto")``); ``intra_op_threads`` default to onnxruntime's (one per
        core). Raises :class:`ModelError` for a missing, unreadable or non-birdops model."""
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        requested = list(providers) if providers is not None else providers_for("auto")
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1  # sequential execution: the graph is one chain of ops
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=requested)
        except _ort_errors() as err:
            raise ModelError(f"{path}: onnxruntime cannot load the model: {err}") from err
        metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, str(path))
        classifier = cls(session, metadata, path, requested)
        classifier._check_signature()
        if CUDA_PROVIDER in requested and CUDA_PROVIDER not in classifier.providers:
            log.warning(
                "%s was requested but is not in use (no GPU, or CUDA/cuDNN libraries missing); running on %s",
                CUDA_PROVIDER,
                ", ".join(classifier.providers),
            )
        return classifier

    def _check_signature(self) -> None:
        """The graph must take ``waveform [batch, window_samples]`` and give ``logits [batch, C]``."""
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise ModelError(
                f"{self.path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, the graph has "
                f"inputs {sorted(inputs)} and outputs {sorted(outputs)}"
            )
        samples = inputs[INPUT_NAME].shape[-1]
        if isinstance(samples, int) and samples != self.metadata.window_samples:
            raise ModelError(
                f"{self.path}: the graph takes {samples} samples, its metadata says "
                f"{self.metadata.window_seconds} s at {self.metadata.sample_rate_hz} Hz"
            )
        classes = outputs[OUTPUT_NAME].shape[-1]
        if isinstance(classes, int) and classes != len(self.metadata.labels):
            raise ModelError(f"{self.path}: {classes} logits but {len(self.metadata.labels)} labels")

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, preferred first."""
        return list(self.session.get_providers())

    @property
    def labels(self) -> tuple[str, ...]:
        return self.metadata.labels

    @property
    def sample_rate_hz(self) -> int:
        return self.metadata.sample_rate_hz

    @property
    def window_seconds(self) -> float:
        return self.metadata.window_seconds

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """``windows (B, window_samples)`` float32 -> logits ``(B, C)`` float32."""
        if windows.ndim != 2 or windows.shape[1] != self.metadata.window_samples:
            raise ValueError(f"expected (batch, {self.metadata.window_samples}) windows, got {windows.shape}")
        batch = np.ascontiguousarray(windows, dtype=np.float32)
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return np.asarray(logits, dtype=np.float32)

    def predict_windows(
        self, wave: np.ndarray, hop_seconds: float | None = None, batch_size: int = 32
    ) -> WindowScores:
        """Class probabilities of every window of ``wave`` (float32 mono at the model's sample rate).

        Windows are the model's length and start every ``hop_seconds`` (default: the window length,
        i.e. no overlap); they run ``batch_size`` at a time.
        """
        hop_seconds = even_hop_seconds(hop_seconds, self.window_seconds)
        batches = even_batches(wave, self.sample_rate_hz, self.window_seconds, hop_seconds, batch_size)
        starts_s, scores = self._scores(batches)
        return self._result(starts_s, scores, len(wave))

    def predict_stream(
        self, blocks: Iterable[np.ndarray], hop_seconds: float | None = None, batch_size: int = 32
    ) -> WindowScores:
        """:meth:`predict_windows` of the recording whose pieces ``blocks`` are (float32 mono at the
        model's sample rate, in order), classified as they arrive: the same windows and scores."""
        hop_seconds = even_hop_seconds(hop_seconds, self.window_seconds)
        windows = StreamedWindows(blocks, self.sample_rate_hz, self.window_seconds, hop_seconds, batch_size)
        starts_s, scores = self._scores(windows)
        return self._result(starts_s, scores, windows.samples)

    def _scores(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """``(starts_s (N,), softmax scores (N, C))`` of every batch of windows."""
        starts: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for windows, starts_s in batches:
            scores.append(softmax(self.logits(windows)).astype(np.float32))  # (B, C) float32
            starts.append(starts_s)
        return np.concatenate(starts), np.concatenate(scores)

    def _result(self, starts_s: np.ndarray, scores: np.ndarray, samples: int) -> WindowScores:
        return WindowScores(
            starts_s=starts_s,
            scores=scores,
            labels=self.labels,
            window_seconds=self.window_seconds,
            duration_s=samples / self.sample_rate_hz,
        )

    def predict_file(
        self, path: str | Path, hop_seconds: float | None = None, batch_size: int = 32
    ) -> WindowScores:
        """:meth:`predict_windows` of an audio file, streamed (:func:`birdops.audio.stream_audio`);
        raises :class:`birdops.audio.AudioError`."""
        blocks = stream_audio(path, self.sample_rate_hz, self.window_seconds)
        return self.predict_stream(blocks, hop_seconds, batch_size)

    def predict_bytes(
        self, payload: bytes, name: str = "<upload>", hop_seconds: float | None = None, batch_size: int = 32
    ) -> WindowScores:
        """:meth:`predict_file` of an in-memory audio file (``name`` only appears in messages)."""
        blocks = stream_bytes(payload, self.sample_rate_hz, name, self.window_seconds)
        return self.predict_stream(blocks, hop_seconds, batch_size)

    def describe(self) -> dict[str, Any]:
        """The model's identity and settings, JSON-ready (for logs and ``GET /ready``)."""
        meta = self.metadata
        return {
            "variant": meta.variant,
            "model_sha256": meta.model_sha256,
            "num_labels": len(meta.labels),
            "labels": list(meta.labels),
            "sample_rate_hz": meta.sample_rate_hz,
            "window_seconds": meta.window_seconds,
            "providers": self.providers,
        }
