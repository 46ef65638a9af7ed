"""Interleaved repeats and their medians: every side of a comparison is measured once per round, so
a slow spell of a shared machine lands on all sides instead of on one."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def interleaved(sides: Mapping[str, Callable[[], T]], repeats: int) -> dict[str, list[T]]:
    """``repeats`` rounds, each calling every side once in order; each side's results in round order."""
    results: dict[str, list[T]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, measure in sides.items():
            results[name].append(measure())
    return results


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def wall_seconds(run: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``run``."""
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def cpu_seconds(run: Callable[[], object]) -> float:
    """CPU seconds (every thread of this process) of one call of ``run``."""
    started = time.process_time()
    run()
    return time.process_time() - started


def call_latencies(run: Callable[[], object], min_calls: int, min_seconds: float) -> list[float]:
    """Seconds of each call of ``run``: at least ``min_calls`` calls and ``min_seconds`` in all."""
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < min_calls or time.perf_counter() - started < min_seconds:
        latencies.append(wall_seconds(run))
    return latencies


def percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile (0..1) of ``values``, interpolated linearly between the nearest ranks."""
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def rate_summary(seconds: list[float], units_per_run: float) -> dict[str, Any]:
    """Throughput of repeated runs that each did ``units_per_run`` units of work: the median rate,
    with every run's seconds kept."""
    return {"seconds": [round(s, 4) for s in seconds], "per_s": units_per_run / median(seconds)}
