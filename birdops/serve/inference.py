"""Inference with an exported birdops model: onnxruntime, numpy and soundfile only -- never torch.

The ``.onnx`` file describes itself (``docs/architecture.md``, "Exported model"): input ``waveform``
float32 ``[batch, samples]``, output ``logits`` float32 ``[batch, classes]``, and ``birdops.*``
metadata props with the labels, sample rate, window length and feature settings. Nothing else is read.

A recording is decoded at the model's sample rate, cut into windows of the model's length that start
every ``hop_seconds`` (the last one zero-padded, as :func:`birdops.audio.frame_windows` does), run in
batches, and each window's logits become class probabilities (softmax). A file's score for a class is
the mean of its windows' probabilities. Files and uploads are streamed: decoded, resampled and cut into
windows block by block (:class:`StreamedWindows`), so memory does not grow with their length; the
windows, batches and scores are exactly those of the whole decoded array.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from birdops.audio import frame_windows, stream_audio, stream_bytes
from birdops.contracts import INPUT_NAME, OUTPUT_NAME, MetadataError, ModelMetadata
from birdops.providers import CUDA_PROVIDER, providers_for

log = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model file cannot be served: unreadable, not a birdops export, or inconsistent metadata."""


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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax ``(N, C) -> (N, C)`` float32, computed in float64 so large logits cannot overflow."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    out: np.ndarray = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def aggregate(scores: np.ndarray) -> np.ndarray:
    """A recording's class probabilities: the mean over its windows ``(N, C) -> (C,)``."""
    if scores.ndim != 2 or len(scores) == 0:
        raise ValueError(f"expected (windows, classes) scores with at least one window, got {scores.shape}")
    out: np.ndarray = scores.mean(axis=0)
    return out


def top_k(
    probabilities: np.ndarray, labels: Sequence[str], k: int, min_score: float = 0.0
) -> list[SpeciesScore]:
    """The ``k`` highest of ``probabilities (C,)`` with a score >= ``min_score``, best first (ties: lower
    class index first)."""
    order = np.argsort(-probabilities, kind="stable")[: max(k, 0)]
    return [SpeciesScore(labels[i], float(probabilities[i])) for i in order if probabilities[i] >= min_score]


def window_batches(
    wave: np.ndarray, sample_rate_hz: int, window_seconds: float, hop_seconds: float, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(windows (B, S), starts_s (B,))`` of ``wave``, ``batch_size`` windows at a time.

    The windows are exactly :func:`birdops.audio.frame_windows`'s, but only one batch of them is in
    memory at once: a long recording cut every second would otherwise hold hours of copies.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    window_samples = round(window_seconds * sample_rate_hz)
    hop_samples = round(hop_seconds * sample_rate_hz)
    if window_samples <= 0 or hop_samples <= 0:
        raise ValueError("window_seconds and hop_seconds must be positive")
    first = 0  # index of the batch's first window
    while True:
        start_sample = first * hop_samples
        piece = wave[start_sample : start_sample + (batch_size - 1) * hop_samples + window_samples]
        windows, _ = frame_windows(piece, sample_rate_hz, window_seconds, hop_seconds)
        starts_s = (first + np.arange(len(windows))) * hop_samples / sample_rate_hz
        yield windows, starts_s
        first += len(windows)
        if start_sample + (len(windows) - 1) * hop_samples + window_samples >= len(wave):
            return


class StreamedWindows:
    """The batches of :func:`window_batches` cut from ``blocks`` (float32 mono pieces of a recording,
    in order) as they arrive: the same windows, starts and batches, and the same zero-padded last
    window, while holding at most one batch of windows and one block. Iterate once; ``samples`` is the
    recording's length once the iteration is over."""

    def __init__(
        self,
        blocks: Iterable[np.ndarray],
        sample_rate_hz: int,
        window_seconds: float,
        hop_seconds: float,
        batch_size: int,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.window_samples = round(window_seconds * sample_rate_hz)
        self.hop_samples = round(hop_seconds * sample_rate_hz)
        if self.window_samples <= 0 or self.hop_samples <= 0:
            raise ValueError("window_seconds and hop_seconds must be positive")
        self.blocks = blocks
        self.sample_rate_hz = sample_rate_hz
        self.batch_size = batch_size
        self.samples = 0
        # samples [base, base + fill) of the recording wait in buffer[:fill]; base is the next window's
        # start, or the recording's end while that start lies beyond it (a hop longer than a window)
        self._buffer = np.empty((batch_size - 1) * self.hop_samples + self.window_samples, dtype=np.float32)
        self._fill = 0
        self._base = 0
        self._next = 0  # index of the next window to emit

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(windows (B, S), starts_s (B,))``, ``batch_size`` windows a batch but the last."""
        batch_span = (self.batch_size - 1) * self.hop_samples + self.window_samples
        for block in self.blocks:
            self.samples += len(block)
            self._append(block)
            while self._next * self.hop_samples + batch_span <= self._base + self._fill:
                yield self._batch(self._buffer, self._next * self.hop_samples - self._base, self.batch_size)
            self._drop_before_next()
        yield from self._tail()

    def _append(self, block: np.ndarray) -> None:
        skip = self._next * self.hop_samples - (self._base + self._fill)  # > 0: samples no window needs
        if skip > 0:  # (only with an empty buffer)
            dropped = min(skip, len(block))
            block = block[dropped:]
            self._base += dropped
        if self._fill + len(block) > len(self._buffer):
            grown = np.empty(max(2 * len(self._buffer), self._fill + len(block)), dtype=np.float32)
            grown[: self._fill] = self._buffer[: self._fill]
            self._buffer = grown
        self._buffer[self._fill : self._fill + len(block)] = block
        self._fill += len(block)

    def _batch(self, samples: np.ndarray, offset: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` windows of ``samples`` from ``offset``, one hop apart, as one contiguous batch."""
        span = (count - 1) * self.hop_samples + self.window_samples
        views = np.lib.stride_tricks.sliding_window_view(samples[offset : offset + span], self.window_samples)
        windows = views[:: self.hop_samples].copy()  # (count, S), contiguous: the buffer is reused
        starts_s = (self._next + np.arange(count)) * self.hop_samples / self.sample_rate_hz
        self._next += count
        return windows, starts_s

    def _drop_before_next(self) -> None:
        cut = min(self._next * self.hop_samples - self._base, self._fill)
        if cut > 0:
            kept = self._fill - cut
            self._buffer[:kept] = self._buffer[cut : self._fill]
            self._base += cut
            self._fill = kept

    def _tail(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The windows left at the end, zero-padded as :func:`birdops.audio.frame_windows` pads them."""
        total = max(1, int(np.ceil(max(self.samples - self.window_samples, 0) / self.hop_samples)) + 1)
        left = total - self._next
        if left <= 0:
            return
        # what is buffered starts at the next window (an empty buffer when the recording ends before it)
        padded = np.zeros((left - 1) * self.hop_samples + self.window_samples, dtype=np.float32)
        padded[: self._fill] = self._buffer[: self._fill]
        done = 0
        while done < left:
            count = min(self.batch_size, left - done)
            yield self._batch(padded, done * self.hop_samples, count)
            done += count


# ---------------------------------------------------------------------------------------- sessions
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
        try:
            metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, str(path))
        except MetadataError as err:
            raise ModelError(str(err)) from err
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
        hop_seconds = hop_seconds or self.window_seconds
        batches = window_batches(wave, self.sample_rate_hz, self.window_seconds, hop_seconds, batch_size)
        starts_s, scores = self._scores(batches)
        return self._result(starts_s, scores, len(wave))

    def predict_stream(
        self, blocks: Iterable[np.ndarray], hop_seconds: float | None = None, batch_size: int = 32
    ) -> WindowScores:
        """:meth:`predict_windows` of the recording whose pieces ``blocks`` are (float32 mono at the
        model's sample rate, in order), classified as they arrive: the same windows and scores."""
        hop_seconds = hop_seconds or self.window_seconds
        windows = StreamedWindows(blocks, self.sample_rate_hz, self.window_seconds, hop_seconds, batch_size)
        starts_s, scores = self._scores(windows)
        return self._result(starts_s, scores, windows.samples)

    def _scores(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """``(starts_s (N,), softmax scores (N, C))`` of every batch of windows."""
        starts: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for windows, starts_s in batches:
            scores.append(softmax(self.logits(windows)))
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
