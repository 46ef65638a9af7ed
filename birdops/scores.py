"""Class probabilities from logits, and a recording's from its windows': numpy only (the serving image
has neither torch nor scikit-learn; evaluation's metrics use the same softmax)."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax ``(N, C) -> (N, C)`` float64, computed in float64 whatever the logits' dtype, after
    subtracting each row's maximum, so large logits cannot overflow."""
    wide = logits.astype(np.float64)
    exp = np.exp(wide - wide.max(axis=1, keepdims=True))
    out: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return out


def aggregate(scores: np.ndarray) -> np.ndarray:
    """A recording's class probabilities: the mean over its windows ``(N, C) -> (C,)``."""
    if scores.ndim != 2 or len(scores) == 0:
        raise ValueError(f"expected (windows, classes) scores with at least one window, got {scores.shape}")
    out: np.ndarray = scores.mean(axis=0)
    return out
