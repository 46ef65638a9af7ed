"""``birdops serve``: the exported model behind an HTTP API (FastAPI + uvicorn, onnxruntime, no torch).

    birdops serve --model models/export/model.onnx --host 127.0.0.1 --port 8000

Settings come from ``BIRDOPS_SERVE_*`` environment variables (:class:`ServeSettings`), overridden by
the options. Endpoints:

- ``POST /predict``: multipart upload ``file`` (any format soundfile decodes: WAV, FLAC, OGG, MP3...)
  -> the detections (:mod:`birdops.serve.detect`): each window's species whose calibrated score
  reaches its threshold (the model's, ``?min_score=`` for every species, or the form field
  ``thresholds``, a JSON object ``{"species": threshold}``, for those it lists), at most ``?top_k=``
  (default: the ``top_k`` setting) a window; ``?all=true``: every window's ``top_k`` species whatever
  the thresholds. The response lists the windows with detections, the species found in the file
  and their count: ``"detections": 0``, ``"species": []`` and ``"message": "no detections"`` when
  nothing reached its threshold. ``?embeddings=true`` adds every window's embedding (the model's
  second output; 422 for a model without one).
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

How it holds under load:

- the HTTP protocol is uvicorn's h11 one with deadlines and caps (:func:`guarded_protocol`): a
  connection must deliver a request's headers within ``header_timeout_s`` (from the connection, or
  from the request's first byte on a kept-alive one), and a head over ``max_header_bytes`` is a 400
  (h11's limit). Connections that have not sent a complete head (idle kept-alive ones, slow senders)
  cost a few KiB on the event loop and are cut by that deadline, so they are not refused for their
  number: past ``max_connections`` (by default from the file-descriptor limit), a new connection
  closes the one that has waited longest for a head. What is capped is the requests in progress (a
  head received, no answer sent): past ``max_requests_in_progress`` the request gets 503 and its
  connection is closed. (uvicorn's own ``limit_concurrency`` is not used: it counts idle connections
  too, and its 503 has no ``Retry-After``.)
- the body must arrive within ``body_timeout_s`` (:class:`RequestGuard`, which also enforces the size);
- decoding and inference run in worker threads, at most ``max_concurrent_inferences`` at a time
  (:class:`InferenceQueue`). The others wait, admitted by time, not count: while the requests ahead
  per slot times the estimated seconds per request (measured, an exponentially weighted mean) fit
  ``queue_timeout_s``, and while the admitted uploads fit ``max_queued_bytes``; a running upload is
  read into memory. The event loop keeps answering meanwhile; ``InferenceSession.run`` is
  thread-safe, and a run past its deadline is stopped with ``RunOptions.terminate``.

The upload is decoded from memory, block by block as its windows are classified: the client's file name
only appears in messages.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import logging
import math
import re
import resource
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any, Literal, cast

import anyio
import h11
import numpy as np
import onnxruntime as ort
import soundfile as sf
import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from birdops import __version__
from birdops.audio import AudioError, TooLongAudioError, stream_bytes
from birdops.contracts import ModelMetadata
from birdops.serve.detect import Selection, ThresholdsError, json_thresholds, select, species_found
from birdops.serve.inference import Classifier, ModelError, SpeciesScore, WindowScores, open_classifier
from birdops.serve.settings import ServeSettings
from birdops.windows import even_hop_seconds

log = logging.getLogger(__name__)

# room for the multipart boundary and part headers around the file itself
MULTIPART_OVERHEAD_BYTES = 16 * 1024
DISPLAY_NAME_CHARS = 100


class AudioTooLong(AudioError):
    """The upload decodes to more audio than the server accepts."""


class Overloaded(Exception):
    """The server cannot take the request now: answered 503 with ``Retry-After``: ``retry_after_s``
    when the refusal knows when there will be room, else the settings' ``retry_after_s``."""

    def __init__(self, detail: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


# "<_io.BytesIO object at 0x7f...>" and the like: decoder messages name the in-memory file so
OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def clean_detail(message: str) -> str:
    """A message fit for a client: no Python object reprs (addresses of in-memory files)."""
    return OBJECT_REPR.sub("the upload", message)


# ------------------------------------------------------------------------------------ API schema
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


# ------------------------------------------------------------------------------------ body guard
class RequestGuard:
    """Pure ASGI middleware: a request body over ``max_body_bytes`` gets 413, one that does not
    arrive within ``body_timeout_s`` of the request's start gets 408.

    A ``Content-Length`` over the limit is refused before a byte of the body is read; a body without
    one (chunked) is counted as it streams in and refused as soon as it passes the limit, so no
    request ever buffers more than the limit. The exceptions are ``HTTPException``s so that FastAPI,
    which reads the body, passes them on as the 413 / 408 instead of a generic 400.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float = 60.0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

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
        deadline = time.monotonic() + self.body_timeout_s

        async def guarded_receive() -> Message:
            nonlocal received
            try:
                with anyio.fail_after(max(deadline - time.monotonic(), 0.0)):
                    message = await receive()
            except TimeoutError:
                detail = f"request body not received within {self.body_timeout_s:g} s"
                raise HTTPException(408, detail=detail, headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, detail=self.message(), headers={"Connection": "close"})
            return message

        await self.app(scope, guarded_receive, send)

    def message(self) -> str:
        limit = self.max_body_bytes - MULTIPART_OVERHEAD_BYTES
        return f"upload too large: this server accepts files of at most {limit} bytes"


# --------------------------------------------------------------------------------- the connection
# descriptors for what is not a connection or a spooled upload: the model, logs, the event loop, threads
FD_RESERVE = 64
# the most connections a cap derived from the descriptor limit allows: each may hold a head of up to
# max_header_bytes in memory while it arrives
MAX_DERIVED_CONNECTIONS = 4096


@dataclasses.dataclass
class Connections:
    """The server's open connections and requests in progress, counted by :func:`guarded_protocol`'s
    protocol; ``max_open`` is the connection cap in force (:func:`connection_cap`)."""

    max_open: int
    open: int = 0
    in_progress: int = 0


def connection_cap(settings: ServeSettings) -> int:
    """``max_connections``, or when it is unset the file descriptors left for connections: the soft
    ``RLIMIT_NOFILE`` less one per request in progress (its upload may be spooled to a temporary file)
    and ``FD_RESERVE``, at most ``MAX_DERIVED_CONNECTIONS``. Raises ``ValueError`` when that leaves no
    more connections than ``max_requests_in_progress``."""
    if settings.max_connections is not None:
        return settings.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_DERIVED_CONNECTIONS
    cap = min(soft - settings.max_requests_in_progress - FD_RESERVE, MAX_DERIVED_CONNECTIONS)
    if cap <= settings.max_requests_in_progress:
        raise ValueError(
            f"the file-descriptor limit ({soft}) leaves {cap} connections, not more than "
            f"max_requests_in_progress ({settings.max_requests_in_progress}): raise it (ulimit -n) "
            "or lower max_requests_in_progress"
        )
    return cap


def overloaded_response(detail: str, retry_after_s: int) -> JSONResponse:
    return JSONResponse(
        {"detail": detail},
        status_code=503,
        headers={"Retry-After": str(retry_after_s), "Connection": "close"},
    )


def raw_response(status: str, detail: str, headers: str = "") -> bytes:
    """A complete HTTP/1.1 JSON answer that closes the connection, for the protocol to write itself."""
    body = json.dumps({"detail": detail})
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n{headers}"
        f"content-length: {len(body)}\r\n\r\n{body}"
    ).encode()


def guarded_protocol(settings: ServeSettings, connections: Connections) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header deadline, a cap on requests in progress and a connection
    cap that closes the connection waiting longest for a request head (module docstring)."""
    retry_after = f"retry-after: {settings.retry_after_s}\r\n"
    timeout_response = raw_response(
        "408 Request Timeout", f"request headers not received within {settings.header_timeout_s:g} s"
    )
    room_response = raw_response(
        "503 Service Unavailable",
        f"closed to make room: this server holds at most {connections.max_open} connections, "
        "and this one sent no complete request head for the longest",
        retry_after,
    )
    no_room = overloaded_response(
        f"too many connections: this server holds at most {connections.max_open}", settings.retry_after_s
    )
    busy = overloaded_response(
        "too many requests in progress: this server takes at most "
        f"{settings.max_requests_in_progress} at once",
        settings.retry_after_s,
    )

    async def refuse_connection(scope: Scope, receive: Receive, send: Send) -> None:
        await no_room(scope, receive, send)

    async def in_progress(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """``app``, for a request that fits ``max_requests_in_progress`` (else 503), counted until
        its answer is sent."""
        connections.in_progress += 1
        try:
            if connections.in_progress > settings.max_requests_in_progress:
                await busy(scope, receive, send)
            else:
                await app(scope, receive, send)
        finally:
            connections.in_progress -= 1

    class GuardedH11Protocol(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None
        waiting_since = 0.0  # loop time since when the connection awaits a request head

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(cast(asyncio.Transport, transport))
            self.waiting_since = self.loop.time()
            if len(self.connections) > connections.max_open and not self._make_room():
                self.app = refuse_connection  # answered once its request's head is in, then closed
            else:
                self.app = partial(in_progress, self.app)
            connections.open = len(self.connections)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)
            connections.open = len(self.connections)

        def data_received(self, data: bytes) -> None:
            if self.header_timer is None and self._awaiting_head():
                self._arm_header_timer()  # the first byte of a request on a kept-alive connection
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # h11 parsed a request's head
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            self.waiting_since = self.loop.time()  # kept alive: idle from now on
            super().on_response_complete()

        def _awaiting_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _make_room(self) -> bool:
            """Close the other connection that has waited longest for a request head (idle, or a slow
            sender): whether there was one. The ones with a request in progress are never closed."""
            candidates = [
                other
                for other in self.connections
                if isinstance(other, GuardedH11Protocol)
                and other is not self
                and other._awaiting_head()
                and not other.transport.is_closing()
            ]
            if not candidates:
                return False
            min(candidates, key=lambda other: other.waiting_since)._cut(room_response)
            return True

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self.header_timer = self.loop.call_later(settings.header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _header_timeout(self) -> None:
            self.header_timer = None
            if not self.transport.is_closing() and self._awaiting_head():
                self._cut(timeout_response)

        def _cut(self, response: bytes) -> None:
            """Close the connection, answering ``response`` when a request has begun to arrive."""
            self._cancel_header_timer()
            if self.conn.their_state is not h11.IDLE or self.conn.trailing_data[0]:
                self.transport.write(response)
            self.transport.close()

    return GuardedH11Protocol


# ------------------------------------------------------------------------------------- the queue
class InferenceQueue:
    """At most ``slots`` inferences run at once; the other admitted requests wait for a slot, in order
    of arrival. Admission is by time and bytes, not count: :meth:`admit` takes a request while its
    expected wait (:meth:`expected_wait_s`) fits ``wait_timeout_s`` and its upload fits ``max_bytes``
    with those already admitted (waiting or running), else raises :class:`Overloaded` with the seconds
    after which there should be room; a request whose wait really passes ``wait_timeout_s`` gets
    :class:`Overloaded` too. The seconds one request holds a slot, ``service_s``, start as a stand-in
    until the first is measured, then follow an exponentially weighted mean of the measured ones.
    Its lock is made in the event loop, on the first :meth:`admit`."""

    SMOOTHING = 0.2  # the weight of the latest measurement in service_s (about the last ten requests)

    def __init__(self, slots: int, wait_timeout_s: float, max_bytes: int, service_s: float) -> None:
        self.slots = slots
        self.wait_timeout_s = wait_timeout_s
        self.max_bytes = max_bytes
        self.service_s = service_s
        self.measured = 0  # requests whose service time went into service_s
        self.running = 0
        self.waiting = 0
        self.held_bytes = 0  # the uploads of the admitted requests
        self._limiter: anyio.CapacityLimiter | None = None

    def expected_wait_s(self) -> float:
        """The wait of a request arriving now: none while a slot is free, else one ``service_s`` for
        each round of ``slots`` requests that must end before a slot is its own (the running ones and
        those waiting ahead of it; whole rounds, so the running ones count as just started)."""
        ahead = self.running + self.waiting
        if ahead < self.slots:
            return 0.0
        return ((ahead - self.slots) // self.slots + 1) * self.service_s

    def refusal(self, size_bytes: int) -> Overloaded | None:
        """Why a request with an upload of ``size_bytes`` would be refused now, or None."""
        wait_s = self.expected_wait_s()
        if wait_s > self.wait_timeout_s:
            return Overloaded(
                f"server busy: the expected wait for an inference is {wait_s:.1f} s ({self.running} "
                f"running, {self.waiting} waiting), over the {self.wait_timeout_s:g} s a request may wait",
                math.ceil(wait_s - self.wait_timeout_s),  # when the queue should fit the budget again
            )
        if self.held_bytes + size_bytes > self.max_bytes:
            return Overloaded(
                f"server busy: the queued uploads hold {self.held_bytes} bytes; this one's {size_bytes} "
                f"would pass {self.max_bytes}",
                math.ceil(max(wait_s, self.service_s)),  # when the first admitted one should be done
            )
        return None

    @property
    def saturated(self) -> bool:
        """A request with a small upload would be refused now."""
        return self.refusal(1) is not None

    @asynccontextmanager
    async def admit(self, size_bytes: int) -> AsyncIterator[None]:
        """Hold an inference slot for the ``async with`` body, after waiting for one; ``size_bytes``
        (the upload) counts against ``max_bytes`` until the body ends."""
        refused = self.refusal(size_bytes)
        if refused is not None:
            raise refused
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.slots)
        limiter = self._limiter
        self.held_bytes += size_bytes
        try:
            self.waiting += 1
            try:
                with anyio.move_on_after(self.wait_timeout_s) as scope:
                    await limiter.acquire()
            finally:
                self.waiting -= 1
            if scope.cancelled_caught:
                raise Overloaded(f"server busy: no inference slot within {self.wait_timeout_s:g} s")
            self.running += 1
            started = time.monotonic()
            try:
                yield
            finally:
                self.running -= 1
                limiter.release()
                self._measured(time.monotonic() - started)
        finally:
            self.held_bytes -= size_bytes

    def _measured(self, seconds: float) -> None:
        # as TCP estimates its round-trip time (RFC 6298): a conservative stand-in until the first
        # measurement, which replaces it, then a smoothed mean
        self.measured += 1
        if self.measured == 1:
            self.service_s = seconds  # the stand-in is only for before the first measurement
        else:
            self.service_s += self.SMOOTHING * (seconds - self.service_s)


# ------------------------------------------------------------------------------------ inference
class InferenceTimeout(Overloaded):
    """An inference ran past ``inference_timeout_s``."""


class InferenceBudget:
    """The time one request's inference may take: its onnxruntime runs share a ``RunOptions`` that
    :meth:`expire` (called from the event loop) terminates; later runs are not started."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.run_options = ort.RunOptions()
        self._expired = threading.Event()

    def expire(self) -> None:
        self._expired.set()
        self.run_options.terminate = True

    @property
    def expired(self) -> bool:
        return self._expired.is_set()

    def error(self) -> InferenceTimeout:
        return InferenceTimeout(f"inference did not finish within {self.seconds:g} s")


class _BudgetedSession:
    """An ``InferenceSession`` stand-in whose ``run`` keeps to an :class:`InferenceBudget`."""

    def __init__(self, session: ort.InferenceSession, budget: InferenceBudget) -> None:
        self._session = session
        self._budget = budget

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        if self._budget.expired:
            raise self._budget.error()
        try:
            return self._session.run(output_names, input_feed, self._budget.run_options)
        except Exception as err:
            if self._budget.expired:
                raise self._budget.error() from err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


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
        raise AudioError(name, f"cannot decode audio: {clean_detail(str(err))}") from err
    return info.frames / info.samplerate if info.samplerate > 0 else 0.0


def check_duration(seconds: float, max_seconds: float, name: str) -> None:
    if seconds > max_seconds:
        raise AudioTooLong(
            name, f"audio is {seconds:.1f} s long; this server accepts at most {max_seconds:g} s"
        )


def upload_blocks(
    payload: bytes, sample_rate_hz: int, max_seconds: float, name: str, window_seconds: float | None = None
) -> Iterator[np.ndarray]:
    """The upload decoded from memory block by block (:func:`birdops.audio.stream_bytes`): its duration
    checked from the header before anything is decoded, then on the decoded samples as they come.
    Every failure is an :class:`AudioError` (a decoder's unexpected exception on odd bytes included);
    what the consumer of the blocks raises is its own."""
    try:
        check_duration(audio_seconds(payload, name), max_seconds, name)
        blocks = stream_bytes(payload, sample_rate_hz, name, window_seconds)
        samples = 0
        for block in blocks:
            samples += len(block)
            check_duration(samples / sample_rate_hz, max_seconds, name)
            yield block
    except AudioError:
        raise
    except Exception as err:  # a decoder bug on one odd upload is still the upload's problem
        log.warning("%s: unexpected decode error %s: %s", name, type(err).__name__, err)
        raise AudioError(name, f"cannot decode audio: {type(err).__name__}") from err


def classify_upload(
    classifier: Classifier,
    settings: ServeSettings,
    payload: bytes,
    name: str,
    budget: InferenceBudget | None = None,
    embeddings: bool = False,
) -> WindowScores:
    """Decode and classify an upload (blocking), streamed: the windows run as the blocks are decoded,
    so memory does not grow with the audio's length; with a ``budget``, its runs keep to it; with
    ``embeddings``, each window's embedding comes too."""
    blocks = upload_blocks(
        payload, classifier.sample_rate_hz, settings.max_audio_seconds, name, classifier.window_seconds
    )
    if budget is not None:
        if budget.expired:
            raise budget.error()
        session = cast(ort.InferenceSession, _BudgetedSession(classifier.session, budget))
        classifier = dataclasses.replace(classifier, session=session)
    return classifier.predict_stream(blocks, settings.hop_seconds, settings.batch_size, embeddings)


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


# ------------------------------------------------------------------------------------------ app
ERRORS: dict[int | str, dict[str, Any]] = {
    408: {"model": ErrorMessage, "description": "the request's headers or body did not arrive in time"},
    413: {"model": ErrorMessage, "description": "upload or audio too large"},
    422: {"model": ErrorMessage, "description": "empty, corrupt or unsupported audio, or a bad request"},
    503: {"model": ErrorMessage, "description": "overloaded or not ready: retry after Retry-After seconds"},
}


@dataclasses.dataclass
class Service:
    """What the endpoints share: the model (None until loaded), the queue, the connection counts."""

    settings: ServeSettings
    connections: Connections
    queue: InferenceQueue
    classifier: Classifier | None = None


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
        load = Load(
            connections=connections.open,
            max_connections=connections.max_open,
            requests_in_progress=connections.in_progress,
            max_requests_in_progress=settings.max_requests_in_progress,
            inferences_running=queue.running,
            max_concurrent_inferences=queue.slots,
            requests_waiting=queue.waiting,
            expected_wait_s=queue.expected_wait_s(),
            queue_timeout_s=queue.wait_timeout_s,
            service_estimate_s=queue.service_s,
            queued_bytes=queue.held_bytes,
            max_queued_bytes=queue.max_bytes,
        )
        limits = {
            "max_upload_bytes": settings.max_upload_bytes,
            "max_audio_seconds": settings.max_audio_seconds,
        }
        if service.classifier is None:
            body = Ready(status="loading", ready=False, load=load, **limits)
            headers = {"Retry-After": str(settings.retry_after_s)}
            return JSONResponse(body.model_dump(), status_code=503, headers=headers)
        refusal = queue.refusal(1)
        body = Ready(
            status="saturated" if refusal else "ready",
            ready=refusal is None,
            load=load,
            hop_seconds=even_hop_seconds(settings.hop_seconds, service.classifier.window_seconds),
            **service.classifier.describe(),
            **limits,
        )
        if refusal is None:
            return JSONResponse(body.model_dump())
        headers = {"Retry-After": str(max(settings.retry_after_s, refusal.retry_after_s or 0))}
        return JSONResponse(body.model_dump(), status_code=503, headers=headers)

    @app.post("/predict", response_model=Prediction, responses=ERRORS)
    async def predict(
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
        classifier = service.classifier
        if classifier is None:
            raise Overloaded("the model is not loaded yet")
        name = display_name(file.filename)
        try:
            labels = classifier.labels
            overrides = None if thresholds is None else json_thresholds(thresholds, labels, "thresholds")
            scoring = classifier.metadata.scoring
            selection, warning = select(
                scoring, labels, top_k or settings.top_k, min_score, overrides, report_all
            )
        except ThresholdsError as err:
            raise HTTPException(422, detail=str(err)) from err
        if embeddings and classifier.embedding is None:
            raise HTTPException(
                422,
                detail=f"the model ({classifier.metadata.variant}) has no embedding output: export it again",
            )
        size_bytes = settings.max_upload_bytes if file.size is None else file.size
        async with queue.admit(size_bytes):
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
                result = await anyio.to_thread.run_sync(job)
            except (AudioTooLong, TooLongAudioError) as err:
                raise HTTPException(413, detail=clean_detail(str(err))) from err
            except AudioError as err:
                raise HTTPException(422, detail=clean_detail(str(err))) from err
            finally:
                timer.cancel()
        hop_seconds = even_hop_seconds(settings.hop_seconds, classifier.window_seconds)
        warnings = [] if warning is None else [warning]
        return to_prediction(result, name, selection, hop_seconds, classifier.metadata, warnings)

    return app


# ----------------------------------------------------------------------------------------- main
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
