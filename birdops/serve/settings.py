"""Settings of ``birdops serve``: environment variables ``BIRDOPS_SERVE_<FIELD>``, overridden by the
command line. Created by :func:`birdops.serve.app.main` (or a test), never at import time.

Each field's ``description`` is the one account of what the setting means; README.md's table of
settings is generated from them (:func:`settings_table`):

    python -m birdops.serve.settings --markdown            # print the table
    python -m birdops.serve.settings --update README.md    # rewrite it between README's markers
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from birdops.contracts import EXPORTED_MODEL
from birdops.files import write_text_atomic
from birdops.providers import Device

ENV_PREFIX = "BIRDOPS_SERVE_"
# descriptors for what is not a connection or a spooled upload: the model, logs, the event loop, threads
FD_RESERVE = 64
# the most connections a cap derived from the descriptor limit allows: each may hold a head of up to
# max_header_bytes in memory while it arrives
MAX_DERIVED_CONNECTIONS = 4096
# the README's generated table sits between these two lines
TABLE_START = "<!-- serve-settings:start -->"
TABLE_END = "<!-- serve-settings:end -->"


class ServeSettings(BaseSettings):
    """Everything the HTTP service needs; unknown keyword arguments are rejected."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, protected_namespaces=()
    )

    model_path: Path = Field(Path(EXPORTED_MODEL), description="the exported model (`.onnx`) to serve")
    host: str = Field("127.0.0.1", description="the interface to listen on")
    port: int = Field(8000, ge=1, le=65535, description="the TCP port to listen on")
    device: Device = Field(
        "auto",
        description="where onnxruntime runs: `auto` CUDA when it can really run here, else the CPU; "
        "`cuda` CUDA or the server does not start; `cpu` the CPU",
    )
    intra_op_threads: int | None = Field(
        None, ge=1, description="onnxruntime's intra-op threads; unset: one per core"
    )
    max_upload_bytes: int = Field(
        50 * 1024 * 1024,
        ge=1,
        description="413 for a larger upload, before it is read into memory (from `Content-Length`, or "
        "as soon as a streamed body passes it)",
    )
    max_audio_seconds: float = Field(
        600.0,
        gt=0,
        description="413 for longer audio: checked from the file's header before decoding, then on "
        "the decoded samples",
    )
    top_k: int = Field(
        5,
        ge=1,
        description="species per window and per file in a response when the request gives no `?top_k=`",
    )
    hop_seconds: float | None = Field(
        None, gt=0, description="seconds between window starts; unset: the model's window, no overlap"
    )
    batch_size: int = Field(32, ge=1, description="windows per onnxruntime call")
    max_concurrent_inferences: int = Field(
        2,
        ge=1,
        description="requests decoded and classified at once; the others wait in a queue (bounds "
        "memory and CPU oversubscription)",
    )
    queue_timeout_s: float = Field(
        10.0,
        gt=0,
        description="admission by time: a request waits for an inference slot while its expected "
        "wait (the requests ahead of it per slot, times the estimated seconds one holds a slot) fits "
        "this, else it gets 503 + `Retry-After` (when the wait should fit again) at once; one that "
        "really waits longer than this gets 503 + `Retry-After` then",
    )
    initial_service_s: float = Field(
        1.0,
        gt=0,
        description="the estimate of the seconds one request holds an inference slot until one has "
        "been measured (then an exponentially weighted mean of the measured ones); high is "
        "conservative: a burst at start-up is refused rather than admitted to wait past "
        "`queue_timeout_s`",
    )
    max_queued_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="the uploads of admitted requests (waiting or running), in bytes of the uploaded "
        "files; a request whose upload would pass it gets 503 + `Retry-After`. A waiting upload is "
        "held by the multipart parser (in memory up to 1 MiB, the rest in a temporary file); a "
        "running one is read into memory",
    )
    inference_timeout_s: float = Field(
        60.0,
        gt=0,
        description="decoding and classifying one upload; past it the onnxruntime run is stopped and "
        "503 + `Retry-After` is answered",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="408 and the connection closed when a request's head has not arrived this soon "
        "after the connection opened (or after the request's first byte): slow senders cannot hold it",
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="408 when the whole request body has not arrived this soon after the head"
    )
    max_requests_in_progress: int = Field(
        128,
        ge=1,
        description="requests in progress: a head received and no answer sent yet (bodies arriving, "
        "waiting, running); one more gets 503 + `Retry-After` and its connection is closed. Idle "
        "connections and ones still sending a head do not count. Bounds the memory of bodies being "
        "received (about 1.3 MiB each at most)",
    )
    max_connections: int | None = Field(
        None,
        ge=2,
        description="open connections, idle and slow ones included; unset: from the file-descriptor "
        f"limit (the soft `RLIMIT_NOFILE` less `max_requests_in_progress` and {FD_RESERVE}, at most "
        f"{MAX_DERIVED_CONNECTIONS}). A connection past it closes the one that has waited longest "
        "for a request head, so slow senders cannot lock clients out",
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="h11's limit on a request's head; over it: 400"
    )
    keep_alive_timeout_s: int = Field(
        5, ge=1, description="an idle keep-alive connection is closed after this"
    )
    retry_after_s: int = Field(
        1,
        ge=1,
        description="the least `Retry-After` of a 503; a refusal by the queue's time budget says when "
        "the expected wait fits again",
    )
    log_level: str = Field("info", description="`critical`, `error`, `warning`, `info` or `debug`")

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


# ------------------------------------------------------------------------------ the README's table
def default_text(name: str, value: object) -> str:
    """A field's default as the table shows it: ``unset`` for None, byte counts in MiB / KiB too."""
    if value is None:
        return "unset"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, int) and name.endswith("_bytes"):
        for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
            if value >= size and value % size == 0:
                return f"`{value}` ({value // size} {unit})"
    return f"`{value}`"


def settings_table() -> str:
    """Every setting as a markdown table: its environment variable, default and meaning (the field's
    description), in the fields' order."""
    rows = ["| environment variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in ServeSettings.model_fields.items():
        env = f"`{ENV_PREFIX}{name.upper()}`"
        rows.append(f"| {env} | {default_text(name, field.default)} | {field.description} |")
    return "\n".join(rows)


def with_table(text: str) -> str:
    """``text`` (README.md's) with :func:`settings_table` between ``TABLE_START`` and ``TABLE_END``;
    ``ValueError`` when the markers are missing."""
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"no {TABLE_START} ... {TABLE_END} lines to put the settings table between")
    return f"{text[: start + len(TABLE_START)]}\n{settings_table()}\n{text[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m birdops.serve.settings", description="The settings of birdops serve as a table."
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--markdown", action="store_true", help="print the markdown table")
    action.add_argument("--update", metavar="README", type=Path, help="rewrite the table in this file")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.update is None:
        print(settings_table())
        return 0
    write_text_atomic(args.update, with_table(args.update.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
