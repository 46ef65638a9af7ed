"""How far a test metric can be trusted: bootstrap intervals over test recordings, and paired
comparisons of two variants on the same test clips.

Clips of one recording are not independent (same bird, same microphone, same noise), so every
resampling draws whole *recordings* with replacement and keeps all their clips (a cluster
bootstrap). ``draws`` resamples with a fixed ``seed`` make the figures reproducible.

- :func:`intervals`: the 2.5th and 97.5th percentiles of accuracy and F1 macro over the resamples.
- :func:`paired`: two variants' predictions of the same clips, resampled together: the difference
  ``b - a`` of each metric, its 95% interval, and a two-sided bootstrap p-value (twice the share of
  resamples on the far side of 0, at most 1). A difference whose interval holds 0 is within the noise
  of this test set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from birdops.metrics import CountedMetric, accuracy_counted, f1_macro_counted

METRICS: Mapping[str, CountedMetric] = {"accuracy": accuracy_counted, "f1_macro": f1_macro_counted}


def resample_indices(groups: np.ndarray, draws: int, seed: int) -> list[np.ndarray]:
    """``draws`` index arrays, each the items of as many recordings as there are, drawn with
    replacement (``groups``: the recording of each item)."""
    names, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(names))]
    rng = np.random.default_rng(seed)
    count = len(names)
    return [np.concatenate([members[g] for g in rng.integers(0, count, count)]) for _ in range(draws)]


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def holds(self, value: float) -> bool:
        return self.low <= value <= self.high


def percentile_interval(values: np.ndarray) -> Interval:
    low, high = np.percentile(values, [2.5, 97.5])
    return Interval(round(float(low), 6), round(float(high), 6))


def intervals(
    predicted: np.ndarray, labels: np.ndarray, groups: np.ndarray, num_classes: int, draws: int, seed: int
) -> dict[str, Interval]:
    """95% bootstrap intervals of every metric of :data:`METRICS`."""
    samples = resample_indices(groups, draws, seed)
    return {
        name: percentile_interval(np.array([fn(predicted[i], labels[i], num_classes) for i in samples]))
        for name, fn in METRICS.items()
    }


@dataclass(frozen=True)
class Difference:
    """``b - a`` of one metric on the same items."""

    value: float
    interval: Interval
    p_value: float

    @property
    def within_noise(self) -> bool:
        return self.interval.holds(0.0)


def paired(
    predicted_a: np.ndarray,
    predicted_b: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    num_classes: int,
    draws: int,
    seed: int,
) -> dict[str, Difference]:
    """Paired bootstrap of ``b - a`` for every metric of :data:`METRICS`."""
    if not (predicted_a.shape == predicted_b.shape == labels.shape == groups.shape):
        raise ValueError("paired predictions, labels and groups must cover the same items")
    samples = resample_indices(groups, draws, seed)
    out = {}
    for name, fn in METRICS.items():
        observed = fn(predicted_b, labels, num_classes) - fn(predicted_a, labels, num_classes)
        diffs = np.array([fn(predicted_b[i], labels[i], num_classes) for i in samples]) - np.array(
            [fn(predicted_a[i], labels[i], num_classes) for i in samples]
        )
        p_value = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
        out[name] = Difference(round(observed, 6), percentile_interval(diffs), round(p_value, 4))
    return out
