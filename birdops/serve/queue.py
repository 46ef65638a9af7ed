"""Who runs an inference, who waits, and for how long a run may go on.

Decoding and inference run in worker threads, at most ``max_concurrent_inferences`` at a time
(:class:`InferenceQueue`). The others wait, admitted by time, not count: while the requests ahead
per slot times the estimated seconds per request (measured, an exponentially weighted mean) fit
``queue_timeout_s``, and while the admitted uploads fit ``max_queued_bytes``; a running upload is
read into memory. The event loop keeps answering meanwhile; ``InferenceSession.run`` is thread-safe,
and a run past its deadline (``inference_timeout_s``, :class:`InferenceBudget`) is stopped with
``RunOptions.terminate``. Every refusal is an :class:`Overloaded`, answered 503 with ``Retry-After``.
The limits' values are :class:`birdops.serve.settings.ServeSettings`'.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import onnxruntime as ort


class Overloaded(Exception):
    """The server cannot take the request now: answered 503 with ``Retry-After``: ``retry_after_s``
    when the refusal knows when there will be room, else the settings' ``retry_after_s``."""

    def __init__(self, detail: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


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


# ------------------------------------------------------------------------------- the time budget
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


class BudgetedSession:
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
