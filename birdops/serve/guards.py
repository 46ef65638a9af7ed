"""The HTTP guards of ``birdops serve``: deadlines and caps on connections, request heads and
bodies, before a request reaches a route. The limits' values are
:class:`birdops.serve.settings.ServeSettings`'.

- The HTTP protocol is uvicorn's h11 one with deadlines and caps (:func:`guarded_protocol`): a
  connection must deliver a request's headers within ``header_timeout_s`` (from the connection, or
  from the request's first byte on a kept-alive one), and a head over ``max_header_bytes`` is a 400
  (h11's limit). Connections that have not sent a complete head (idle kept-alive ones, slow senders)
  cost a few KiB on the event loop and are cut by that deadline, so they are not refused for their
  number: past ``max_connections`` (by default from the file-descriptor limit,
  :func:`connection_cap`), a new connection closes the one that has waited longest for a head. What
  is capped is the requests in progress (a head received, no answer sent): past
  ``max_requests_in_progress`` the request gets 503 and its connection is closed. (uvicorn's own
  ``limit_concurrency`` is not used: it counts idle connections too, and its 503 has no
  ``Retry-After``.)
- The body must arrive within ``body_timeout_s`` and hold at most ``max_upload_bytes`` and the
  multipart framing around it (:class:`RequestGuard`, pure ASGI middleware).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import resource
import time
from functools import partial
from typing import cast

import anyio
import h11
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from birdops.serve.settings import FD_RESERVE, MAX_DERIVED_CONNECTIONS, ServeSettings

# room for the multipart boundary and part headers around the file itself
MULTIPART_OVERHEAD_BYTES = 16 * 1024


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
