"""``birdops serve``: the exported model behind an HTTP API (FastAPI + uvicorn, onnxruntime, no torch).

    birdops serve --model models/export/model.onnx --host 127.0.0.1 --port 8000

Settings come from ``BIRDOPS_SERVE_*`` environment variables, overridden by the options; every
setting, its default and its meaning are :class:`birdops.serve.settings.ServeSettings`' fields
(``python -m birdops.serve.settings --markdown`` prints them as a table). Endpoints:

- ``POST /predict``: multipart upload ``file``, one a request (any format soundfile decodes: WAV, FLAC,
  OGG, MP3...)
  -> the detections (:mod:`birdops.serve.detect`): each window's species whose calibrated score
  reaches its threshold (the model's, ``?min_score=`` for every species, or the form field
  ``thresholds``, a JSON object ``{"species": threshold}``, for those it lists), at most ``?top_k=``
  (default: the ``top_k`` setting) a window; ``?all=true``: every window's ``top_k`` species whatever
  the thresholds. The response (:mod:`birdops.serve.schema`) lists the windows with detections, the
  species found in the file and their count: ``"detections": 0``, ``"species": []`` and
  ``"message": "no detections"`` when nothing reached its threshold. ``?embeddings=true`` adds every
  window's embedding (the model's second output; 422 for a model without one).
- ``GET /health``: the process is up. ``GET /ready``: 200 when the model is loaded and the server has
  room for another request, else 503 (``status`` ``loading`` or ``saturated``); the model's metadata,
  providers and the current load.
- ``GET /docs``: OpenAPI documentation.

Refusals are 4xx with a ``detail`` message, and the only 5xx is 503 with ``Retry-After`` for overload:
413 for a body over ``max_upload_bytes`` (from ``Content-Length`` before anything is read, or as soon
as a streamed body passes the limit) and for audio longer than ``max_audio_seconds`` (from the file
header, before decoding); 422 for an empty, corrupt or unsupported file (every
:class:`birdops.audio.AudioError`); 408 for headers or a body that do not arrive in time; 503 when a
request's expected wait for an inference passes ``queue_timeout_s`` (``Retry-After``: when it should
fit again), its upload does not fit ``max_queued_bytes``, it really waited ``queue_timeout_s``, its
inference ran past ``inference_timeout_s``, or ``max_requests_in_progress`` requests are in progress.

How it holds under load, one module per job: :mod:`birdops.serve.guards` (the h11 protocol's header
deadline and connection caps, the body's deadline and size), :mod:`birdops.serve.queue` (inferences
admitted by time and bytes, each with a deadline), :mod:`birdops.serve.uploads` (the upload decoded
from memory block by block as its windows are classified; the client's file name only appears in
messages). The device is :func:`birdops.providers.choose_providers`'s rule.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Sequence
from functools import partial
from typing import Annotated, Any

import anyio
import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from birdops import __version__
from birdops.audio import AudioError, TooLongAudioError
from birdops.serve.detect import Selection, ThresholdsError, json_thresholds, select
from birdops.serve.guards import (
    MULTIPART_OVERHEAD_BYTES,
    Connections,
    RequestGuard,
    connection_cap,
    guarded_protocol,
    overloaded_response,
)
from birdops.serve.inference import Classifier, ModelError, WindowScores, open_classifier
from birdops.serve.queue import InferenceBudget, InferenceQueue, Overloaded
from birdops.serve.schema import ERRORS, Health, Load, Prediction, Ready, to_prediction
from birdops.serve.settings import ServeSettings
from birdops.serve.uploads import AudioTooLong, classify_upload, clean_detail, display_name
from birdops.windows import even_hop_seconds

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Service:
    """What the endpoints share: the model (None until loaded), the queue, the connection counts."""

    settings: ServeSettings
    connections: Connections
    queue: InferenceQueue
    classifier: Classifier | None = None

    def load(self) -> Load:
        """The connections, requests and inferences now, beside their caps."""
        connections, queue = self.connections, self.queue
        return Load(
            connections=connections.open,
            max_connections=connections.max_open,
            requests_in_progress=connections.in_progress,
            max_requests_in_progress=self.settings.max_requests_in_progress,
            inferences_running=queue.running,
            max_concurrent_inferences=queue.slots,
            requests_waiting=queue.waiting,
            expected_wait_s=queue.expected_wait_s(),
            queue_timeout_s=queue.wait_timeout_s,
            service_estimate_s=queue.service_s,
            queued_bytes=queue.held_bytes,
            max_queued_bytes=queue.max_bytes,
        )

    def readiness(self) -> JSONResponse:
        """``GET /ready``'s answer: 200 with the model and the load, or 503 (``loading``, ``saturated``)
        with ``Retry-After``."""
        settings = self.settings
        limits = {
            "max_upload_bytes": settings.max_upload_bytes,
            "max_audio_seconds": settings.max_audio_seconds,
        }
        if self.classifier is None:
            body = Ready(status="loading", ready=False, load=self.load(), **limits)
            headers = {"Retry-After": str(settings.retry_after_s)}
            return JSONResponse(body.model_dump(), status_code=503, headers=headers)
        refusal = self.queue.refusal(1)
        body = Ready(
            status="saturated" if refusal else "ready",
            ready=refusal is None,
            load=self.load(),
            hop_seconds=even_hop_seconds(settings.hop_seconds, self.classifier.window_seconds),
            **self.classifier.describe(),
            **limits,
        )
        if refusal is None:
            return JSONResponse(body.model_dump())
        headers = {"Retry-After": str(max(settings.retry_after_s, refusal.retry_after_s or 0))}
        return JSONResponse(body.model_dump(), status_code=503, headers=headers)

    def model(self) -> Classifier:
        """The loaded model; before it is, the request is refused as overload (503, ``Retry-After``)."""
        if self.classifier is None:
            raise Overloaded("the model is not loaded yet")
        return self.classifier

    async def classify(self, file: UploadFile, name: str, embeddings: bool) -> WindowScores:
        """Admit the upload to the queue, then decode and classify it in a worker thread within the
        inference deadline; the refusals are HTTP errors (413, 422) or :class:`Overloaded` (503)."""
        settings, classifier = self.settings, self.model()
        size_bytes = settings.max_upload_bytes if file.size is None else file.size
        async with self.queue.admit(size_bytes):
            payload = await file.read(settings.max_upload_bytes + 1)
            if len(payload) > settings.max_upload_bytes:
                raise HTTPException(
                    413, detail=f"{name}: upload too large: at most {settings.max_upload_bytes} bytes"
                )
            if not payload:
                raise HTTPException(422, detail=f"{name}: empty file")
            budget = InferenceBudget(settings.inference_timeout_s)
            job = partial(classify_upload, classifier, settings, payload, name, budget, embeddings)
            timer = asyncio.get_running_loop().call_later(settings.inference_timeout_s, budget.expire)
            try:
                return await anyio.to_thread.run_sync(job)
            except (AudioTooLong, TooLongAudioError) as err:
                raise HTTPException(413, detail=clean_detail(str(err))) from err
            except AudioError as err:
                raise HTTPException(422, detail=clean_detail(str(err))) from err
            finally:
                timer.cancel()


def request_selection(
    classifier: Classifier,
    top_k: int,
    min_score: float | None,
    thresholds: str | None,
    report_all: bool,
    embeddings: bool,
) -> tuple[Selection, str | None]:
    """What a request asks to be reported (:func:`birdops.serve.detect.select`), checked against the
    model before the upload is read: a bad ``thresholds`` field or embeddings of a model without them
    are 422."""
    try:
        labels = classifier.labels
        overrides = None if thresholds is None else json_thresholds(thresholds, labels, "thresholds")
        selection_and_warning = select(
            classifier.metadata.scoring, labels, top_k, min_score, overrides, report_all
        )
    except ThresholdsError as err:
        raise HTTPException(422, detail=str(err)) from err
    if embeddings and classifier.embedding is None:
        raise HTTPException(
            422, detail=f"the model ({classifier.metadata.variant}) has no embedding output: export it again"
        )
    return selection_and_warning


def create_app(
    classifier: Classifier | None, settings: ServeSettings, connections: Connections | None = None
) -> FastAPI:
    """The FastAPI application serving ``classifier`` with ``settings``' limits. ``classifier`` may be
    None (set ``app.state.service.classifier`` once loaded); ``connections`` are the counts kept by
    :func:`guarded_protocol`'s protocol."""
    queue = InferenceQueue(
        settings.max_concurrent_inferences,
        settings.queue_timeout_s,
        settings.max_queued_bytes,
        settings.initial_service_s,
    )
    connections = connections or Connections(max_open=connection_cap(settings))
    service = Service(settings, connections, queue, classifier)
    app = FastAPI(
        title="birdops",
        version=__version__,
        description="Bird-species classification of audio recordings with an exported ONNX model.",
    )
    app.state.service = service
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
        body_timeout_s=settings.body_timeout_s,
    )

    @app.exception_handler(Overloaded)
    async def overloaded(request: Any, err: Overloaded) -> JSONResponse:
        return overloaded_response(str(err), max(settings.retry_after_s, err.retry_after_s or 0))

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """The process is up."""
        return Health()

    @app.get("/ready", response_model=Ready, responses={503: {"model": Ready}})
    async def ready() -> JSONResponse:
        """200 when the model is loaded and another request would be admitted, else 503: what the
        model is, where it runs, and the current load."""
        return service.readiness()

    @app.post("/predict", response_model=Prediction, responses=ERRORS)
    async def predict(
        request: Request,
        file: Annotated[UploadFile, File(description="an audio file: WAV, FLAC, OGG, MP3...")],
        top_k: Annotated[
            int | None,
            Query(
                ge=1, le=100, description="at most this many species per window (default: the top_k setting)"
            ),
        ] = None,
        min_score: Annotated[
            float | None,
            Query(ge=0.0, le=1.0, description="one threshold for every species, in place of the model's"),
        ] = None,
        report_all: Annotated[
            bool,
            Query(alias="all", description="every window's top_k species, whatever the thresholds"),
        ] = False,
        embeddings: Annotated[
            bool,
            Query(description="every window's embedding too (the model's second output)"),
        ] = False,
        thresholds: Annotated[
            str | None,
            Form(
                description='JSON object {"species": threshold in [0, 1]}: those species\' thresholds, '
                "over the model's or min_score"
            ),
        ] = None,
    ) -> Prediction:
        """Detect species in an uploaded recording, window by window; a file where nothing reaches its
        threshold gets ``"detections": 0``, empty ``species`` and ``windows``, and ``"no detections"``."""
        uploads = len((await request.form()).getlist("file"))  # the form FastAPI parsed, not read again
        if uploads > 1:  # FastAPI would take the last and drop the others without a word
            raise HTTPException(422, detail=f"one file per request: the form holds {uploads} 'file' fields")
        classifier = service.model()
        name = display_name(file.filename)
        selection, warning = request_selection(
            classifier, top_k or settings.top_k, min_score, thresholds, report_all, embeddings
        )
        result = await service.classify(file, name, embeddings)
        hop_seconds = even_hop_seconds(settings.hop_seconds, classifier.window_seconds)
        warnings = [] if warning is None else [warning]
        return to_prediction(result, name, selection, hop_seconds, classifier.metadata, warnings)

    return app


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
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="auto: CUDA when it can run here, else the CPU; cuda: CUDA or exit 1",
    )
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
        connections = Connections(max_open=connection_cap(settings))
    except ValueError as err:
        log.error("invalid settings: %s", err)
        return 2
    try:
        classifier = open_classifier(settings.model_path, settings.device, settings.intra_op_threads)
    except ModelError as err:
        log.error("%s", err)
        return 1
    try:
        classifier.check_hop(settings.hop_seconds)
    except ValueError as err:
        log.error("invalid settings: hop_seconds: %s", err)
        return 2
    described = classifier.describe()
    log.info(
        "serving %s (variant %s, %d labels, %s s windows at %d Hz) on %s; at most %d connections, "
        "%d requests in progress",
        settings.model_path,
        described["variant"],
        described["num_labels"],
        described["window_seconds"],
        described["sample_rate_hz"],
        ", ".join(classifier.providers),
        connections.max_open,
        settings.max_requests_in_progress,
    )
    uvicorn.run(
        create_app(classifier, settings, connections),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=guarded_protocol(settings, connections),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=10,
    )
    return 0
