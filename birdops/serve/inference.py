"""Inference with an exported birdops model: onnxruntime, numpy and soundfile only -- never torch.

The ``.onnx`` file describes itself (``docs/architecture.md``, "Exported model"): input ``waveform``
float32 ``[batch, samples]``, output ``logits`` float32 ``[batch, classes]``, and ``birdops.*``
metadata props with the labels, sample rate, window length and feature settings. Nothing else is read.
Exports that have it name a second output in their metadata, the pooled embedding ``[batch, dim]``;
asked for (``embeddings=True``), each window's row comes with its scores, from the same run.

A recording is decoded at the model's sample rate, cut into even windows of the model's length that
start every ``hop_seconds`` (the last one zero-padded: :mod:`birdops.windows`), run in batches, and each
window's logits become calibrated scores as the model's metadata says
(:attr:`ModelMetadata.scoring <birdops.contracts.ModelMetadata>`, :func:`birdops.scores.scores`):
``sigmoid(scale * logits + bias)``, one independent probability per species (a window may score low
for every species), or an uncalibrated ``softmax`` for an export without scoring props. Which
(window, species) pairs are reported is :mod:`birdops.serve.detect`'s business. Files and uploads are
streamed: decoded, resampled and cut into windows block by block
(:class:`birdops.windows.StreamedWindows`), so memory does not grow with their length; the windows,
batches and scores are exactly those of the whole decoded array.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from birdops.audio import MAX_STREAM_SECONDS, AudioError, read_ahead, stream_audio, stream_bytes
from birdops.contracts import EMBEDDING_KEY, INPUT_NAME, OUTPUT_NAME, Embedding, MetadataError, ModelMetadata
from birdops.providers import CUDA_PROVIDER, Device, DeviceUnavailable, choose_providers
from birdops.scores import aggregate
from birdops.scores import scores as calibrated_scores
from birdops.windows import StreamedWindows, even_batches, even_hop_seconds, seconds_to_samples

log = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model file cannot be served: unreadable, not a birdops export, or inconsistent metadata."""


# ------------------------------------------------------------------------------------------ scores
@dataclass(frozen=True)
class SpeciesScore:
    species: str
    score: float  # calibrated score in [0, 1]


@dataclass(frozen=True)
class WindowScores:
    """Per-window calibrated class scores of one recording."""

    starts_s: np.ndarray  # (N,) window starts, seconds from the start of the recording
    scores: np.ndarray  # (N, C) float32 in [0, 1]: sigmoid scores (independent), or softmax (rows sum to 1)
    labels: tuple[str, ...]  # (C,)
    window_seconds: float
    duration_s: float  # of the decoded recording
    activation: str = "softmax"  # the model's: how file_scores aggregates the windows
    embeddings: np.ndarray | None = None  # (N, D) float32, each window's embedding; None: not asked for
    # why decoding stopped before the file's end (damaged data: predict_file, predict_bytes); the
    # windows cover the audio before it. None: the whole file
    damage: str | None = None

    @property
    def ends_s(self) -> np.ndarray:
        """(N,) window ends; the last, zero-padded window ends with the recording."""
        return np.minimum(self.starts_s + self.window_seconds, self.duration_s)

    def stopped_at(self, damage: Sequence[AudioError]) -> WindowScores:
        """These scores noting the damage their stream stopped at (:func:`birdops.audio.stream_audio`'s
        ``damage`` list), or themselves when it holds none."""
        return replace(self, damage=damage[0].reason) if damage else self

    def file_scores(self) -> np.ndarray:
        """(C,) the file's score of each class.

        Sigmoid models: the highest window score. Each species' score answers "is it in this
        window?", and a file holds a species when any of its windows does; the mean would dilute a
        2 s call in an hour of audio to nothing. With it a species reaches its threshold in the file
        exactly when it does in some window, so the file and its windows never disagree.
        Softmax models (closed-set, older exports): the mean over the windows
        (:func:`birdops.scores.aggregate`), the recording-level score evaluation reports.
        """
        if self.activation == "sigmoid":
            best: np.ndarray = self.scores.max(axis=0)
            return best
        return aggregate(self.scores)

    def file_top(self, k: int) -> list[SpeciesScore]:
        return top_k(self.file_scores(), self.labels, k)

    def window_top(self, k: int, min_score: float = 0.0) -> list[list[SpeciesScore]]:
        """For each window, its ``k`` highest-scoring classes with a score >= ``min_score``."""
        return [top_k(row, self.labels, k, min_score) for row in self.scores]


def top_k(
    probabilities: np.ndarray, labels: Sequence[str], k: int, min_score: float = 0.0
) -> list[SpeciesScore]:
    """The ``k`` highest of ``probabilities (C,)`` with a score >= ``min_score``, best first (ties: lower
    class index first)."""
    order = np.argsort(-probabilities, kind="stable")[: max(k, 0)]
    return [SpeciesScore(labels[i], float(probabilities[i])) for i in order if probabilities[i] >= min_score]


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
        spinning: bool = True,
    ) -> Classifier:
        """Open ``path``; ``providers`` default to device ``auto``'s
        (:func:`birdops.providers.choose_providers`: CUDA when it can run here, else the CPU);
        ``intra_op_threads`` default to onnxruntime's (one per core). ``spinning=False``: the intra-op
        threads sleep between runs instead of spinning, for a process whose other threads need the
        cores meanwhile (``birdops predict``'s decoder: its hour of FLAC ran 1.2x faster on 2 threads
        and 2 cores; alone, onnxruntime loses 3-4% without spinning). Raises :class:`ModelError` for a
        missing, unreadable or non-birdops model."""
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        requested = list(providers) if providers is not None else choose_providers("auto").providers
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1  # sequential execution: the graph is one chain of ops
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
        embedding = self.metadata.embedding
        if embedding is None:
            return
        if embedding.output not in outputs:
            raise ModelError(
                f"{self.path}: {EMBEDDING_KEY} names the output {embedding.output!r}, the graph has "
                f"outputs {sorted(outputs)}"
            )
        width = outputs[embedding.output].shape[-1]
        if isinstance(width, int) and width != embedding.dim:
            raise ModelError(
                f"{self.path}: the {embedding.output} output is {width} wide, "
                f"{EMBEDDING_KEY} says {embedding.dim}"
            )

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

    @property
    def embedding(self) -> Embedding | None:
        """The model's embedding output; None for an export without one (from before embeddings)."""
        return self.metadata.embedding

    def require_embedding(self) -> Embedding:
        """The model's embedding output; :class:`ModelError` saying why when it has none."""
        if self.metadata.embedding is None:
            raise ModelError(
                f"{self.path}: the model has no embedding output (its metadata lacks {EMBEDDING_KEY}: "
                "an export from before embeddings); export it again to get embeddings"
            )
        return self.metadata.embedding

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """``windows (B, window_samples)`` float32 -> logits ``(B, C)`` float32."""
        (logits,) = self._run(windows, [OUTPUT_NAME])
        return logits

    def logits_and_embeddings(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``windows (B, window_samples)`` float32 -> ``(logits (B, C), embeddings (B, D))`` float32,
        from one run; :class:`ModelError` for a model without an embedding output."""
        logits, embeddings = self._run(windows, [OUTPUT_NAME, self.require_embedding().output])
        return logits, embeddings

    def _run(self, windows: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        if windows.ndim != 2 or windows.shape[1] != self.metadata.window_samples:
            raise ValueError(f"expected (batch, {self.metadata.window_samples}) windows, got {windows.shape}")
        batch = np.ascontiguousarray(windows, dtype=np.float32)
        return [np.asarray(out, dtype=np.float32) for out in self.session.run(outputs, {INPUT_NAME: batch})]

    def predict_windows(
        self,
        wave: np.ndarray,
        hop_seconds: float | None = None,
        batch_size: int = 32,
        embeddings: bool = False,
    ) -> WindowScores:
        """Calibrated class scores of every window of ``wave`` (float32 mono at the model's sample rate),
        and with ``embeddings`` each window's embedding (:class:`ModelError` if the model has none).

        Windows are the model's length and start every ``hop_seconds`` (default: the window length,
        i.e. no overlap); they run ``batch_size`` at a time.
        """
        hop_seconds = even_hop_seconds(hop_seconds, self.window_seconds)
        batches = even_batches(wave, self.sample_rate_hz, self.window_seconds, hop_seconds, batch_size)
        return self._result(*self._scores(batches, embeddings), len(wave))

    def predict_stream(
        self,
        blocks: Iterable[np.ndarray],
        hop_seconds: float | None = None,
        batch_size: int = 32,
        embeddings: bool = False,
    ) -> WindowScores:
        """:meth:`predict_windows` of the recording whose pieces ``blocks`` are (float32 mono at the
        model's sample rate, in order), classified as they arrive: the same windows and scores."""
        hop_seconds = even_hop_seconds(hop_seconds, self.window_seconds)
        windows = StreamedWindows(blocks, self.sample_rate_hz, self.window_seconds, hop_seconds, batch_size)
        return self._result(*self._scores(windows, embeddings), windows.samples)

    def check_hop(self, hop_seconds: float | None) -> None:
        """ValueError when windows ``hop_seconds`` apart cannot be cut at the model's sample rate (a
        hop under one sample), naming the smallest hop; None (no overlap) always can."""
        if hop_seconds is None:
            return
        if not hop_seconds <= MAX_STREAM_SECONDS:  # NaN and inf too
            raise ValueError(
                f"a hop of {hop_seconds:g} s is longer than the longest recording birdops reads "
                f"({MAX_STREAM_SECONDS:g} s)"
            )
        if seconds_to_samples(hop_seconds, self.sample_rate_hz) < 1:
            raise ValueError(
                f"a hop of {hop_seconds:g} s is under one sample at the model's {self.sample_rate_hz} Hz "
                f"(at least {1 / self.sample_rate_hz:.3g} s)"
            )

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated scores ``(B, C)`` float32 of ``logits (B, C)``: the model's activation of
        ``scale * logits + bias`` (its metadata; computed in float64, rounded once)."""
        scoring = self.metadata.scoring
        return calibrated_scores(logits, scoring.activation, scoring.scale, scoring.bias).astype(np.float32)

    def _scores(
        self, batches: Iterable[tuple[np.ndarray, np.ndarray]], embeddings: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(starts_s (N,), calibrated scores (N, C), embeddings (N, D) or None)`` of every batch of
        windows; the embeddings only when asked for (the model is checked before any window runs)."""
        if embeddings:
            self.require_embedding()
        starts: list[np.ndarray] = []
        window_scores: list[np.ndarray] = []
        window_embeddings: list[np.ndarray] = []
        for windows, starts_s in batches:
            if embeddings:
                logits, embedded = self.logits_and_embeddings(windows)  # (B, C), (B, D)
                window_embeddings.append(embedded)
            else:
                logits = self.logits(windows)
            window_scores.append(self.calibrated(logits))  # (B, C) float32
            starts.append(starts_s)
        rows = np.concatenate(window_embeddings) if embeddings else None
        return np.concatenate(starts), np.concatenate(window_scores), rows

    def _result(
        self, starts_s: np.ndarray, scores: np.ndarray, embeddings: np.ndarray | None, samples: int
    ) -> WindowScores:
        return WindowScores(
            starts_s=starts_s,
            scores=scores,
            labels=self.labels,
            window_seconds=self.window_seconds,
            duration_s=samples / self.sample_rate_hz,
            activation=self.metadata.scoring.activation,
            embeddings=embeddings,
        )

    def predict_file(
        self,
        path: str | Path,
        hop_seconds: float | None = None,
        batch_size: int = 32,
        embeddings: bool = False,
    ) -> WindowScores:
        """:meth:`predict_windows` of an audio file, streamed (:func:`birdops.audio.stream_audio`) and
        decoded a batch ahead while the model runs (:meth:`ahead`); raises
        :class:`birdops.audio.AudioError`. A file damaged part way (a corrupt stretch, a cut-off end
        the decoder cannot pass) is classified up to the damage, which :attr:`WindowScores.damage`
        names; damaged from its start, it is refused."""
        damage: list[AudioError] = []
        blocks = stream_audio(path, self.sample_rate_hz, self.window_seconds, damage)
        return self._predict_ahead(blocks, hop_seconds, batch_size, embeddings, damage)

    def predict_bytes(
        self,
        payload: bytes,
        name: str = "<upload>",
        hop_seconds: float | None = None,
        batch_size: int = 32,
        embeddings: bool = False,
    ) -> WindowScores:
        """:meth:`predict_file` of an in-memory audio file (``name`` only appears in messages)."""
        damage: list[AudioError] = []
        blocks = stream_bytes(payload, self.sample_rate_hz, name, self.window_seconds, damage)
        return self._predict_ahead(blocks, hop_seconds, batch_size, embeddings, damage)

    def _predict_ahead(
        self,
        blocks: Iterator[np.ndarray],
        hop_seconds: float | None,
        batch_size: int,
        embeddings: bool,
        damage: list[AudioError],
    ) -> WindowScores:
        """:meth:`predict_stream` of ``blocks`` decoded by a background thread :meth:`ahead` of it;
        the damage the stream stopped at, if any (:func:`birdops.audio.stream_audio`), noted."""
        return self.predict_stream(
            read_ahead(blocks, self.ahead(batch_size)), hop_seconds, batch_size, embeddings
        ).stopped_at(damage)

    def ahead(self, batch_size: int) -> int:
        """Samples to decode ahead of the model: the most a batch of windows reads, and one window
        more, so the decoder fills the next batch while onnxruntime runs this one. With the decoder a
        few blocks ahead only, the two took turns: on one intra-op thread an hour of 44.1 kHz FLAC
        took 1.8x (exported phase2b) and 1.4x (full) as long."""
        return (batch_size + 1) * seconds_to_samples(self.window_seconds, self.sample_rate_hz)

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
            "activation": meta.scoring.activation,
            "calibration": {"scale": meta.scoring.scale, "bias": meta.scoring.bias},
            "thresholds": None if meta.scoring.thresholds is None else list(meta.scoring.thresholds),
            "embedding_dim": None if meta.embedding is None else meta.embedding.dim,
            "providers": self.providers,
        }


def open_classifier(
    path: str | Path, device: Device, intra_op_threads: int | None = None, spinning: bool = True
) -> Classifier:
    """Open ``path`` on ``device`` by the one device rule (:func:`birdops.providers.choose_providers`)
    and log the choice in one line; :class:`ModelError` when ``device="cuda"`` and CUDA cannot run
    (the probe says why) or is not in use once the session is made."""
    try:
        choice = choose_providers(device)
    except DeviceUnavailable as err:
        raise ModelError(str(err)) from err
    ort.set_default_logger_severity(3)  # errors only: the choice is logged below, in one line
    classifier = Classifier.load(path, choice.providers, intra_op_threads, spinning)
    if device == "cuda" and CUDA_PROVIDER not in classifier.providers:
        raise ModelError(f"device 'cuda' was asked for but onnxruntime runs on {classifier.providers}")
    log.info("%s: running on %s", choice.reason, classifier.providers[0])
    return classifier
