"""Cutting a waveform into fixed-length windows: numpy only (serving imports this, never torch).

One arithmetic for every window of the project: a length in seconds is ``round(seconds *
sample_rate_hz)`` samples (:func:`seconds_to_samples`), and :func:`cut` copies the windows that start
at given samples into a float32 ``(N, window_samples)`` array, zero past the end of the waveform. Two
policies choose the starts:

- *chosen clips* (:func:`clips_at`): starts given in seconds, each rounded to a sample. The feature
  cache takes them from :func:`birdops.features.activity.choose_segments`; the export's parity gate
  reads them back from the cache's index.
- *even windows* (:class:`EvenWindows`): from sample 0, one every ``hop_samples``, as many as it takes
  to reach the last sample, so the last one is zero-padded and a recording shorter than one window
  gives one padded window. Evaluation cuts a whole recording at once (:func:`even_windows`);
  ``birdops predict`` and the service cut a decoded array a batch at a time (:func:`even_batches`) or a
  stream of decoded blocks as they come (:class:`StreamedWindows`). All three take their starts and
  their count from the same :class:`EvenWindows` and cut with :func:`cut`, so a streamed decode gives
  the windows, starts and batches of the whole decode, bit for bit.

Waveforms are float32 mono ``(samples,)`` and are never changed; the windows are copies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np


def seconds_to_samples(seconds: float, sample_rate_hz: int) -> int:
    """The number of samples in ``seconds`` at ``sample_rate_hz``, rounded to the nearest."""
    return round(seconds * sample_rate_hz)


def cut(wave: np.ndarray, start_samples: Sequence[int] | np.ndarray, window_samples: int) -> np.ndarray:
    """The windows of ``wave (samples,)`` that start at ``start_samples (N,)``, zero-padded past its
    end: ``(N, window_samples)`` float32 (a start at or beyond the end gives a row of zeros)."""
    windows = np.zeros((len(start_samples), window_samples), dtype=np.float32)
    for row, start in enumerate(start_samples):
        if start < 0:
            raise ValueError(f"a window cannot start before the waveform (sample {start})")
        piece = wave[start : start + window_samples]
        windows[row, : len(piece)] = piece
    return windows


# ---------------------------------------------------------------------------------- chosen clips
def clips_at(
    wave: np.ndarray, sample_rate_hz: int, starts_s: Sequence[float], clip_seconds: float
) -> np.ndarray:
    """The clips of ``clip_seconds`` starting at ``starts_s`` seconds, zero-padded past the end:
    ``(len(starts_s), clip_samples)`` float32."""
    starts = [seconds_to_samples(start_s, sample_rate_hz) for start_s in starts_s]
    return cut(wave, starts, seconds_to_samples(clip_seconds, sample_rate_hz))


# ---------------------------------------------------------------------------------- even windows
def even_hop_seconds(hop_seconds: float | None, window_seconds: float) -> float:
    """The hop of even windows: ``hop_seconds`` when set, else the window length (no overlap)."""
    return hop_seconds or window_seconds


@dataclass(frozen=True)
class EvenWindows:
    """Windows of ``window_samples`` starting every ``hop_samples`` from sample 0, until one reaches the
    recording's last sample (see the module docstring)."""

    sample_rate_hz: int
    window_samples: int
    hop_samples: int

    @classmethod
    def of(cls, sample_rate_hz: int, window_seconds: float, hop_seconds: float) -> EvenWindows:
        """Windows of ``window_seconds`` every ``hop_seconds``; ValueError when either is not positive."""
        window_samples = seconds_to_samples(window_seconds, sample_rate_hz)
        hop_samples = seconds_to_samples(hop_seconds, sample_rate_hz)
        if window_samples <= 0 or hop_samples <= 0:
            raise ValueError("window_seconds and hop_seconds must be positive")
        return cls(sample_rate_hz, window_samples, hop_samples)

    def count(self, samples: int) -> int:
        """How many windows a recording of ``samples`` has: at least one, and enough that the last
        reaches its end."""
        return max(1, int(np.ceil(max(samples - self.window_samples, 0) / self.hop_samples)) + 1)

    def starts(self, first: int, count: int) -> np.ndarray:
        """``(count,)`` int64: the start samples of windows ``first .. first + count - 1``."""
        out: np.ndarray = (first + np.arange(count)) * self.hop_samples
        return out

    def span(self, count: int) -> int:
        """Samples from the first window's start to the last one's end, for ``count`` windows."""
        return (count - 1) * self.hop_samples + self.window_samples

    def seconds(self, starts: np.ndarray) -> np.ndarray:
        """Start samples ``(N,)`` in seconds ``(N,)`` float64."""
        out: np.ndarray = starts / self.sample_rate_hz
        return out


def even_windows(
    wave: np.ndarray, sample_rate_hz: int, window_seconds: float, hop_seconds: float
) -> tuple[np.ndarray, np.ndarray]:
    """Every even window of ``wave`` at once: ``(windows (N, window_samples), starts_s (N,))``."""
    plan = EvenWindows.of(sample_rate_hz, window_seconds, hop_seconds)
    starts = plan.starts(0, plan.count(len(wave)))
    return cut(wave, starts, plan.window_samples), plan.seconds(starts)


def even_batches(
    wave: np.ndarray, sample_rate_hz: int, window_seconds: float, hop_seconds: float, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`even_windows` ``batch_size`` at a time, ``(windows (B, S), starts_s (B,))``: only one batch
    is in memory at once (a long recording cut every second would otherwise hold hours of copies)."""
    _check_batch_size(batch_size)
    plan = EvenWindows.of(sample_rate_hz, window_seconds, hop_seconds)
    total = plan.count(len(wave))
    for first in range(0, total, batch_size):
        starts = plan.starts(first, min(batch_size, total - first))
        yield cut(wave, starts, plan.window_samples), plan.seconds(starts)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")


class StreamedWindows:
    """The batches of :func:`even_batches` cut from ``blocks`` (float32 mono pieces of a recording, in
    order) as they arrive: the same windows, starts and batches, and the same zero-padded last window,
    while holding at most one batch of windows and one block. Iterate once; ``samples`` is the
    recording's length once the iteration is over."""

    def __init__(
        self,
        blocks: Iterable[np.ndarray],
        sample_rate_hz: int,
        window_seconds: float,
        hop_seconds: float,
        batch_size: int,
    ) -> None:
        _check_batch_size(batch_size)
        self.plan = EvenWindows.of(sample_rate_hz, window_seconds, hop_seconds)
        self.blocks = blocks
        self.batch_size = batch_size
        self.samples = 0
        # samples [base, base + fill) of the recording wait in buffer[:fill]; base is the next window's
        # start, or the recording's end while that start lies beyond it (a hop longer than a window)
        self._buffer = np.empty(self.plan.span(batch_size), dtype=np.float32)
        self._fill = 0
        self._base = 0
        self._next = 0  # index of the next window to emit

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(windows (B, S), starts_s (B,))``, ``batch_size`` windows a batch but the last."""
        for block in self.blocks:
            self.samples += len(block)
            self._append(block)
            # a whole batch is buffered: cut it (the windows past the last block wait for the next)
            while self._start(self._next) + self.plan.span(self.batch_size) <= self._base + self._fill:
                yield self._batch(self.batch_size)
            self._drop_before_next()
        total = self.plan.count(self.samples)  # the rest, zero-padded past the end by cut()
        while self._next < total:
            yield self._batch(min(self.batch_size, total - self._next))

    def _start(self, index: int) -> int:
        return index * self.plan.hop_samples

    def _append(self, block: np.ndarray) -> None:
        skip = self._start(self._next) - (self._base + self._fill)  # > 0: samples no window needs
        if skip > 0:  # (only with an empty buffer)
            dropped = min(skip, len(block))
            block = block[dropped:]
            self._base += dropped
        if self._fill + len(block) > len(self._buffer):
            grown = np.empty(max(2 * len(self._buffer), self._fill + len(block)), dtype=np.float32)
            grown[: self._fill] = self._buffer[: self._fill]
            self._buffer = grown
        self._buffer[self._fill : self._fill + len(block)] = block
        self._fill += len(block)

    def _batch(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``count`` windows, cut from what is buffered (zeros past it)."""
        starts = self.plan.starts(self._next, count)
        windows = cut(self._buffer[: self._fill], starts - self._base, self.plan.window_samples)
        self._next += count
        return windows, self.plan.seconds(starts)

    def _drop_before_next(self) -> None:
        drop = min(self._start(self._next) - self._base, self._fill)
        if drop > 0:
            kept = self._fill - drop
            self._buffer[:kept] = self._buffer[drop : self._fill]
            self._base += drop
            self._fill = kept
