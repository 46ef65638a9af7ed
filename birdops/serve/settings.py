"""Settings of ``birdops serve``: environment variables ``BIRDOPS_SERVE_<FIELD>``, overridden by the
command line. Created by :func:`birdops.serve.app.main` (or a test), never at import time."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
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
    # requests that may wait for an inference slot; one more is refused at once with 503 + Retry-After
    max_queued_requests: int = Field(8, ge=0)
    # the longest a request waits for a slot before it gets 503 + Retry-After
    queue_timeout_s: float = Field(10.0, gt=0)
    # decoding and classifying one upload; past it the onnxruntime run is stopped and 503 is answered
    inference_timeout_s: float = Field(60.0, gt=0)
    # a connection must deliver a request's headers this soon after it opens (or after the request's
    # first byte); else 408 and the connection is closed (slow senders cannot hold it)
    header_timeout_s: float = Field(10.0, gt=0)
    # the whole request body must arrive this soon after the headers; else 408
    body_timeout_s: float = Field(60.0, gt=0)
    # open connections; a request on a connection over the cap gets 503 + Retry-After and is closed
    max_connections: int = Field(64, ge=1)
    max_header_bytes: int = Field(16 * 1024, ge=1024)  # h11's limit on a request's head; over it: 400
    keep_alive_timeout_s: int = Field(5, ge=1)  # an idle keep-alive connection is closed after this
    retry_after_s: int = Field(1, ge=1)  # the Retry-After of every 503
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
