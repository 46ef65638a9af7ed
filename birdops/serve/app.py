"""``birdops serve``: the exported model behind an HTTP API (FastAPI + uvicorn, onnxruntime, no torch).

    birdops serve --model models/export/model.onnx --host 127.0.0.1 --port 8000

Settings come from ``BIRDOPS_SERVE_*`` environment variables (:class:`ServeSettings`), overridden by
the options. Endpoints:

- ``POST /predict``: multipart upload ``file`` (any format soundfile decodes: WAV, FLAC, OGG, MP3...)
  -> per-window top species and the file's top species (mean window probability). ``?top_k=`` lowers
  or raises the number of species per window and file.
- ``GET /health``: the process is up. ``GET /ready``: the model is loaded; its metadata and providers.
- ``GET /docs``: OpenAPI documentation.

Refusals are 4xx with a ``detail`` message, never 5xx: 413 for a body over ``max_upload_bytes`` (from
``Content-Length`` before anything is read, or as soon as a streamed body passes the limit) and for
audio longer than ``max_audio_seconds`` (from the file header, before decoding); 422 for an empty,
corrupt or unsupported file. The upload is decoded from memory: the client's file name only appears
in messages. Decoding and inference run in worker threads, at most ``max_concurrent_inferences`` at
a time, so the event loop keeps answering; ``InferenceSession.run`` is thread-safe.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any, Literal

import anyio
import soundfile as sf
import uvicorn
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from birdops import __version__
from birdops.audio import AudioError, decode_bytes
from birdops.serve.inference import (
    CUDA_PROVIDER,
    Classifier,
    ModelError,
    ModelMetadata,
    SpeciesScore,
    WindowScores,
    providers_for,
)
from birdops.serve.settings import ServeSettings

log = logging.getLogger(__name__)

# room for the multipart boundary and part headers around the file itself
MULTIPART_OVERHEAD_BYTES = 16 * 1024
DISPLAY_NAME_CHARS = 100


class AudioTooLong(AudioError):
    """The upload decodes to more audio than the server accepts."""


# ------------------------------------------------------------------------------------ API schema
class Species(BaseModel):
    species: str
    score: float  # probability in [0, 1]


class Window(BaseModel):
    start_s: float
    end_s: float
    top: list[Species]


class Prediction(BaseModel):
    filename: str  # the client's file name, reduced to its last component (never used as a path)
    duration_s: float
    sample_rate_hz: int
    window_seconds: float
    hop_seconds: float
    variant: str
    top: list[Species]  # the file's species: mean probability over its windows
    windows: list[Window]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    variant: str
    source_revision: str
    num_labels: int
    labels: list[str]
    sample_rate_hz: int
    window_seconds: float
    hop_seconds: float
    providers: list[str]  # the onnxruntime execution providers in use, preferred first
    max_upload_bytes: int
    max_audio_seconds: float


class ErrorMessage(BaseModel):
    detail: str


# ------------------------------------------------------------------------------------ body limit
class UploadLimit:
    """Pure ASGI middleware: a request body over ``max_body_bytes`` gets 413.

    A ``Content-Length`` over the limit is refused before a byte of the body is read; a body without
    one (chunked) is counted as it streams in and refused as soon as it passes the limit, so no
    request ever buffers more than the limit. The exception is an ``HTTPException`` so that FastAPI,
    which reads the body, passes it on as the 413 instead of a generic 400.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            response = JSONResponse(
                {"detail": self.message()}, status_code=413, headers={"Connection": "close"}
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, detail=self.message(), headers={"Connection": "close"})
            return message

        await self.app(scope, limited_receive, send)

    def message(self) -> str:
        limit = self.max_body_bytes - MULTIPART_OVERHEAD_BYTES
        return f"upload too large: this server accepts files of at most {limit} bytes"


# ------------------------------------------------------------------------------------ inference
def display_name(filename: str | None) -> str:
    """The client's file name as a label for messages: last path component, printable characters,
    at most ``DISPLAY_NAME_CHARS``. It is never used as a path."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:DISPLAY_NAME_CHARS]
    return name or "upload"


def audio_seconds(payload: bytes, name: str) -> float:
    """The duration the file's header announces, without decoding it."""
    try:
        info = sf.info(io.BytesIO(payload))
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
        raise AudioError(f"{name}: cannot decode audio: {err}") from err
    return info.frames / info.samplerate if info.samplerate > 0 else 0.0


def check_duration(seconds: float, max_seconds: float, name: str) -> None:
    if seconds > max_seconds:
        raise AudioTooLong(
            f"{name}: audio is {seconds:.1f} s long; this server accepts at most {max_seconds:g} s"
        )


def classify_upload(
    classifier: Classifier, settings: ServeSettings, payload: bytes, name: str
) -> WindowScores:
    """Check the duration from the header, decode from memory, check it again, classify (blocking)."""
    check_duration(audio_seconds(payload, name), settings.max_audio_seconds, name)
    wave = decode_bytes(payload, classifier.sample_rate_hz, name)
    check_duration(len(wave) / classifier.sample_rate_hz, settings.max_audio_seconds, name)
    return classifier.predict_windows(wave, settings.hop_seconds, settings.batch_size)


def to_species(items: Sequence[SpeciesScore]) -> list[Species]:
    return [Species(species=s.species, score=s.score) for s in items]


def to_prediction(
    result: WindowScores, name: str, top_k: int, hop_seconds: float, metadata: ModelMetadata
) -> Prediction:
    windows = [
        Window(start_s=float(start), end_s=float(end), top=to_species(top))
        for start, end, top in zip(result.starts_s, result.ends_s, result.window_top(top_k), strict=True)
    ]
    return Prediction(
        filename=name, duration_s=result.duration_s, sample_rate_hz=metadata.sample_rate_hz,
        window_seconds=result.window_seconds, hop_seconds=hop_seconds, variant=metadata.variant,
        top=to_species(result.file_top(top_k)), windows=windows,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ app
ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorMessage, "description": "upload or audio too large"},
    422: {"model": ErrorMessage, "description": "empty, corrupt or unsupported audio, or a bad request"},
}


def create_app(classifier: Classifier, settings: ServeSettings) -> FastAPI:
    """The FastAPI application serving ``classifier`` with ``settings``' limits."""
    hop_seconds = settings.hop_seconds or classifier.window_seconds
    limiter: dict[str, anyio.CapacityLimiter] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limiter["inference"] = anyio.CapacityLimiter(settings.max_concurrent_inferences)
        yield

    app = FastAPI(
        title="birdops", version=__version__, lifespan=lifespan,
        description="Bird-species classification of audio recordings with an exported ONNX model.",
    )  # fmt: skip
    app.add_middleware(UploadLimit, max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES)

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """The process is up."""
        return Health()

    @app.get("/ready", response_model=Ready)
    async def ready() -> Ready:
        """The model is loaded: what it is, and where it runs."""
        return Ready(
            **classifier.describe(), hop_seconds=hop_seconds, max_upload_bytes=settings.max_upload_bytes,
            max_audio_seconds=settings.max_audio_seconds,
        )  # fmt: skip

    @app.post("/predict", response_model=Prediction, responses=ERRORS)
    async def predict(
        file: Annotated[UploadFile, File(description="an audio file: WAV, FLAC, OGG, MP3...")],
        top_k: Annotated[int | None, Query(ge=1, le=100, description="species per window and file")] = None,
    ) -> Prediction:
        """Classify an uploaded recording, window by window."""
        name = display_name(file.filename)
        payload = await file.read(settings.max_upload_bytes + 1)
        if len(payload) > settings.max_upload_bytes:
            raise HTTPException(
                413, detail=f"{name}: upload too large: at most {settings.max_upload_bytes} bytes"
            )
        if not payload:
            raise HTTPException(422, detail=f"{name}: empty file")
        job = partial(classify_upload, classifier, settings, payload, name)
        try:
            result = await anyio.to_thread.run_sync(job, limiter=limiter["inference"])
        except AudioTooLong as err:
            raise HTTPException(413, detail=str(err)) from err
        except AudioError as err:
            raise HTTPException(422, detail=str(err)) from err
        return to_prediction(result, name, top_k or settings.top_k, hop_seconds, classifier.metadata)

    return app


# ----------------------------------------------------------------------------------------- main
def load_classifier(settings: ServeSettings) -> Classifier:
    """The model of ``settings`` on its device; ``device="cuda"`` fails when CUDA is not in use."""
    classifier = Classifier.load(
        settings.model_path, providers_for(settings.device), settings.intra_op_threads
    )
    if settings.device == "cuda" and CUDA_PROVIDER not in classifier.providers:
        raise ModelError(f"device 'cuda' was asked for but onnxruntime runs on {classifier.providers}")
    return classifier


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="birdops serve",
        description="Serve an exported birdops ONNX model over HTTP; options override BIRDOPS_SERVE_*.",
    )
    parser.add_argument(
        "--model", dest="model_path", help="exported model (default models/export/model.onnx)"
    )
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
    parser.add_argument("--threads", dest="intra_op_threads", type=int, help="onnxruntime intra-op threads")
    parser.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = ServeSettings(**overrides)
    except ValidationError as err:
        log.error("invalid settings: %s", err)
        return 2
    try:
        classifier = load_classifier(settings)
    except ModelError as err:
        log.error("%s", err)
        return 1
    described = classifier.describe()
    log.info("serving %s (variant %s, %d labels, %s s windows at %d Hz) on %s", settings.model_path,
             described["variant"], described["num_labels"], described["window_seconds"],
             described["sample_rate_hz"], ", ".join(classifier.providers))  # fmt: skip
    uvicorn.run(create_app(classifier, settings), host=settings.host, port=settings.port,
                log_level=settings.log_level)  # fmt: skip
    return 0
