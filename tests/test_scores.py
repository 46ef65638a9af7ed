"""Class probabilities from logits and per-recording aggregation (``birdops.scores``)."""

from __future__ import annotations

import numpy as np
import pytest

from birdops.scores import aggregate, scores, sigmoid, softmax


def test_softmax_is_stable_for_huge_logits() -> None:
    probabilities = softmax(np.array([[1000.0, 0.0], [-1000.0, -1000.0]], dtype=np.float32))
    np.testing.assert_allclose(probabilities, [[1.0, 0.0], [0.5, 0.5]])


def test_softmax_is_computed_in_float64_whatever_the_logits() -> None:
    """Float32 logits give the float64 softmax of their float64 values (serving rounds that to
    float32; evaluation's metrics keep it)."""
    logits = (np.random.default_rng(0).normal(size=(50, 7)) * 20).astype(np.float32)
    probabilities = softmax(logits)
    assert probabilities.dtype == np.float64
    np.testing.assert_array_equal(probabilities, softmax(logits.astype(np.float64)))
    wide = logits.astype(np.float64)
    expected = np.exp(wide - wide.max(axis=1, keepdims=True))
    np.testing.assert_array_equal(probabilities, expected / expected.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_aggregate_is_the_mean_over_windows() -> None:
    scores = np.array([[0.2, 0.8], [0.6, 0.4], [1.0, 0.0]])
    np.testing.assert_allclose(aggregate(scores), [0.6, 0.4])
    with pytest.raises(ValueError):
        aggregate(np.zeros((0, 4)))


def test_sigmoid_is_stable_and_exact_at_the_extremes() -> None:
    np.testing.assert_array_equal(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])
    x = np.linspace(-30, 30, 61)
    np.testing.assert_allclose(sigmoid(x), 1.0 / (1.0 + np.exp(-x)), rtol=1e-12)


def test_scores_apply_the_calibration_before_the_activation() -> None:
    logits = np.array([[2.0, -1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(scores(logits, "sigmoid", 0.5, -1.0), sigmoid(0.5 * logits - 1.0))
    np.testing.assert_allclose(scores(logits, "softmax", 2.0, 7.0), softmax(2.0 * logits))
    with_none = softmax(np.array([[2.0 * 2.0 + 1.0, 2.0 * -1.0 + 1.0, 1.0, 0.0]]))[:, :3]
    np.testing.assert_allclose(scores(logits, "softmax_background", 2.0, 1.0), with_none)
    assert float(scores(np.full((1, 3), -50.0), "softmax_background").sum()) < 1e-20  # all "none"
    with pytest.raises(ValueError, match="unknown activation"):
        scores(logits, "tanh")
