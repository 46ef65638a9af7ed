"""Settings of ``birdops serve``: environment variables ``BIRDOPS_SERVE_<FIELD>``, overridden by the
command line. Created by :func:`birdops.serve.app.main` (or a test), never at import time."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from birdops.contracts import EXPORTED_MODEL
from birdops.providers import Device


class ServeSettings(BaseSettings):
    """Everything the HTTP service needs; unknown keyword arguments are rejected."""

    model_config = SettingsConfigDict(
        env_prefix="BIRDOPS_SERVE_", extra="forbid", frozen=True, protected_namespaces=()
    )

    model_path: Path = Path(EXPORTED_MODEL)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    device: Device = "auto"  # auto: CUDA when onnxruntime can use it, else CPU
    intra_op_threads: int | None = Field(None, ge=1)  # None: one per core
    # uploads larger than this are refused with 413 before they are read into memory
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1)
    # decoded audio longer than this is refused with 413 (checked from the header before decoding)
    max_audio_seconds: float = Field(600.0, gt=0)
    top_k: int = Field(5, ge=1)  # species per window and per file in a response (the request may lower it)
    hop_seconds: float | None = Field(None, gt=0)  # None: the model's window, no overlap
    batch_size: int = Field(32, ge=1)  # windows per onnxruntime call
    # requests decoded and classified at once; the rest wait (bounds memory and CPU oversubscription)
    max_concurrent_inferences: int = Field(2, ge=1)
    # admission by time: a request waits for an inference slot while its expected wait (the requests
    # ahead of it per slot, times the estimated seconds one holds a slot) fits this, else it gets 503 +
    # Retry-After at once; one that really waits longer than this gets 503 + Retry-After then
    queue_timeout_s: float = Field(10.0, gt=0)
    # the estimate of the seconds one request holds an inference slot until one has been measured
    # (then an exponentially weighted mean of the measured ones); high is conservative: a burst at
    # start-up is refused rather than admitted to wait past queue_timeout_s
    initial_service_s: float = Field(1.0, gt=0)
    # the uploads of admitted requests (waiting or running), in bytes of the uploaded files; a request
    # whose upload would pass it gets 503 + Retry-After. A waiting upload is held by the multipart
    # parser (in memory up to 1 MiB, the rest in a temporary file); a running one is read into memory
    max_queued_bytes: int = Field(256 * 1024 * 1024, ge=1)
    # decoding and classifying one upload; past it the onnxruntime run is stopped and 503 is answered
    inference_timeout_s: float = Field(60.0, gt=0)
    # a connection must deliver a request's headers this soon after it opens (or after the request's
    # first byte); else 408 and the connection is closed (slow senders cannot hold it)
    header_timeout_s: float = Field(10.0, gt=0)
    # the whole request body must arrive this soon after the headers; else 408
    body_timeout_s: float = Field(60.0, gt=0)
    # requests in progress: a head received and no answer sent yet (bodies arriving, waiting, running);
    # one more gets 503 + Retry-After and its connection is closed. Idle connections and ones still
    # sending a head do not count. Bounds the memory of bodies being received (~1.3 MiB each at most)
    max_requests_in_progress: int = Field(128, ge=1)
    # open connections, idle and slow ones included; None: from the file-descriptor limit (the soft
    # RLIMIT_NOFILE less max_requests_in_progress and a reserve, at most 4096). A connection past it
    # closes the one that has waited longest for a request head, so slow senders cannot lock clients out
    max_connections: int | None = Field(None, ge=2)
    max_header_bytes: int = Field(16 * 1024, ge=1024)  # h11's limit on a request's head; over it: 400
    keep_alive_timeout_s: int = Field(5, ge=1)  # an idle keep-alive connection is closed after this
    # the least Retry-After of a 503; a refusal by the queue's time budget says when the expected wait
    # fits again
    retry_after_s: int = Field(1, ge=1)
    log_level: str = "info"

    @field_validator("model_path")
    @classmethod
    def _model_exists(cls, path: Path) -> Path:
        if not path.is_file():
            raise ValueError(
                f"{path}: no model file; export one (`dvc repro export_onnx`) or point "
                "BIRDOPS_SERVE_MODEL_PATH / --model at an exported .onnx file"
            )
        return path

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        level = level.lower()
        if level not in {"critical", "error", "warning", "info", "debug"}:
            raise ValueError(f"unknown log level {level!r}")
        return level

    @model_validator(mode="after")
    def _limits_fit(self) -> ServeSettings:
        if self.max_queued_bytes < self.max_upload_bytes:
            raise ValueError(
                f"max_queued_bytes ({self.max_queued_bytes}) must hold at least one upload of "
                f"max_upload_bytes ({self.max_upload_bytes})"
            )
        if self.max_connections is not None and self.max_connections <= self.max_requests_in_progress:
            raise ValueError(
                f"max_connections ({self.max_connections}) must be above max_requests_in_progress "
                f"({self.max_requests_in_progress}): a new connection makes room by closing an idle one"
            )
        return self
