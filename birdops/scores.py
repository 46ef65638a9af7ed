"""Class scores from logits, and a recording's from its windows': numpy only (the serving image has
neither torch nor scikit-learn; evaluation's metrics, calibration and serving use the same functions).

A model's logits become scores by its activation: ``softmax`` (a distribution over the classes, the
report's closed-set models), ``sigmoid`` (one independent probability per class, the models trained
against background audio, whose scores may all be low when no class is present) or
``softmax_background`` (a distribution over the classes and one more, "none of them", whose logit is
0: the classes' probabilities may add up to much less than one). :func:`scores`
applies the calibration ``activation(scale * logits + bias)`` fitted on validation.
"""

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


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic ``1 / (1 + exp(-x))`` in float64, without overflow for large ``|x|``."""
    wide = np.asarray(logits, dtype=np.float64)
    exp = np.exp(-np.abs(wide))  # in (0, 1]: never overflows
    out: np.ndarray = np.where(wide >= 0, 1.0 / (1.0 + exp), exp / (1.0 + exp))
    return out


def scores(logits: np.ndarray, activation: str, scale: float = 1.0, bias: float = 0.0) -> np.ndarray:
    """Calibrated class scores ``(N, C)`` float64: ``activation(scale * logits + bias)``, where
    ``activation`` is ``"sigmoid"``, ``"softmax"`` (which ignores ``bias``: it shifts every class) or
    ``"softmax_background"`` (the bias moves the classes against "none of them")."""
    scaled = scale * np.asarray(logits, dtype=np.float64) + bias
    if activation == "sigmoid":
        return sigmoid(scaled)
    if activation == "softmax":
        return softmax(scaled)
    if activation == "softmax_background":
        with_none = np.concatenate([scaled, np.zeros((len(scaled), 1))], axis=1)  # (N, C + 1)
        out: np.ndarray = softmax(with_none)[:, :-1]
        return out
    raise ValueError(f"unknown activation {activation!r}: sigmoid, softmax or softmax_background")
