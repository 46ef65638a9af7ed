"""The HTTP API's schema: the response models of ``birdops serve`` (FastAPI documents them at
``/docs``), the error answers the routes declare, and the conversion of a classified upload
(:class:`birdops.serve.inference.WindowScores` and a :class:`birdops.serve.detect.Selection`) into
the ``POST /predict`` answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from birdops.contracts import ModelMetadata
from birdops.serve.detect import Selection, species_found
from birdops.serve.inference import SpeciesScore, WindowScores


class Species(BaseModel):
    species: str
    score: float  # calibrated score in [0, 1]


class Window(BaseModel):
    start_s: float
    end_s: float
    top: list[Species]  # the window's detections, best first (never empty: such windows are left out)


class WindowEmbedding(BaseModel):
    start_s: float
    end_s: float
    embedding: list[float]  # float32 values in their shortest decimal form, ``embedding_dim`` of them


class SpeciesInFile(BaseModel):
    species: str
    score: float  # its best window's score
    windows: int  # windows in which it is reported
    first_start_s: float  # start of the first of them
    last_end_s: float  # end of the last of them


class Prediction(BaseModel):
    filename: str  # the client's file name, reduced to its last component (never used as a path)
    duration_s: float
    sample_rate_hz: int
    window_seconds: float
    hop_seconds: float
    variant: str
    activation: str  # the model's: sigmoid (independent species scores) or softmax
    windows_classified: int  # every window of the file was scored; only those with detections are listed
    detections: int  # (window, species) pairs reported; 0 when nothing reached its threshold
    message: str  # "no detections", or "N detections of M species"
    species: list[SpeciesInFile]  # the species found in the file, best first; [] when none
    windows: list[Window]  # the windows with at least one detection, in time order
    thresholds: dict[str, float] | None  # the threshold applied to each species (None with all=true)
    top_k: int  # the most species reported per window
    warnings: list[str]  # e.g. the model has no thresholds of its own
    embeddings: list[WindowEmbedding] | None = None  # every window's, in time order, with ?embeddings=true


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Load(BaseModel):
    connections: int  # open HTTP connections (this one included), idle and slow ones too
    max_connections: int  # the cap in force (set, or from the file-descriptor limit)
    requests_in_progress: int  # heads received and answers not yet sent (this one included)
    max_requests_in_progress: int
    inferences_running: int
    max_concurrent_inferences: int
    requests_waiting: int  # admitted, waiting for an inference slot
    expected_wait_s: float  # of a request arriving now; it is admitted while this fits queue_timeout_s
    queue_timeout_s: float
    service_estimate_s: float  # the seconds one request is expected to hold an inference slot
    queued_bytes: int  # the uploads of the admitted requests
    max_queued_bytes: int


class Ready(BaseModel):
    status: Literal["ready", "saturated", "loading"]
    ready: bool  # the model is loaded and another request would be admitted (HTTP 200, else 503)
    variant: str | None = None  # the model's identity and settings, once it is loaded
    model_sha256: str | None = None
    num_labels: int | None = None
    labels: list[str] | None = None
    sample_rate_hz: int | None = None
    window_seconds: float | None = None
    hop_seconds: float | None = None
    activation: str | None = None  # how logits become scores: sigmoid or softmax
    calibration: dict[str, float] | None = None  # {"scale", "bias"} of activation(scale * logits + bias)
    thresholds: list[float] | None = None  # the model's, one per label; None: an export without them
    embedding_dim: int | None = (
        None  # of the per-window embeddings (?embeddings=true); None: the model has none
    )
    providers: list[str] | None = None  # the onnxruntime execution providers in use, preferred first
    max_upload_bytes: int
    max_audio_seconds: float
    load: Load


class ErrorMessage(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    408: {"model": ErrorMessage, "description": "the request's headers or body did not arrive in time"},
    413: {"model": ErrorMessage, "description": "upload or audio too large"},
    422: {"model": ErrorMessage, "description": "empty, corrupt or unsupported audio, or a bad request"},
    503: {"model": ErrorMessage, "description": "overloaded or not ready: retry after Retry-After seconds"},
}


def to_embeddings(result: WindowScores) -> list[WindowEmbedding] | None:
    """Each window's embedding, or None when they were not asked for. A value is the float64 of the
    float32's shortest decimal (numpy's), so the JSON is short and reads back to the same float32."""
    if result.embeddings is None:
        return None
    rows = result.embeddings.astype(str).astype(np.float64).tolist()  # (N, D)
    return [
        WindowEmbedding(start_s=float(start), end_s=float(end), embedding=row)
        for start, end, row in zip(result.starts_s, result.ends_s, rows, strict=True)
    ]


def to_species(items: Sequence[SpeciesScore]) -> list[Species]:
    return [Species(species=s.species, score=s.score) for s in items]


def to_prediction(
    result: WindowScores,
    name: str,
    selection: Selection,
    hop_seconds: float,
    metadata: ModelMetadata,
    warnings: Sequence[str] = (),
) -> Prediction:
    picked = selection.pick(result.scores, result.labels)
    windows = [
        Window(start_s=float(start), end_s=float(end), top=to_species(items))
        for start, end, items in zip(result.starts_s, result.ends_s, picked, strict=True)
        if items
    ]
    found = species_found(result, picked)
    detections = sum(len(items) for items in picked)
    plural = "" if detections == 1 else "s"
    message = f"{detections} detection{plural} of {len(found)} species" if detections else "no detections"
    if result.damage is not None:
        damaged = f"classified up to {result.duration_s:.1f} s, where the file is damaged: {result.damage}"
        warnings = [*warnings, damaged]
    return Prediction(
        filename=name,
        duration_s=result.duration_s,
        sample_rate_hz=metadata.sample_rate_hz,
        window_seconds=result.window_seconds,
        hop_seconds=hop_seconds,
        variant=metadata.variant,
        activation=metadata.scoring.activation,
        windows_classified=len(result.starts_s),
        detections=detections,
        message=message,
        species=[
            SpeciesInFile(
                species=f.species,
                score=f.best_score,
                windows=f.windows,
                first_start_s=f.first_start_s,
                last_end_s=f.last_end_s,
            )
            for f in found
        ],
        windows=windows,
        thresholds=selection.thresholds_by_species(metadata.labels),
        top_k=len(metadata.labels) if selection.top_k is None else selection.top_k,
        warnings=list(warnings),
        embeddings=to_embeddings(result),
    )
