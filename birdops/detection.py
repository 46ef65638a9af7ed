"""Window-level detection: ground truth per window, ranking metrics, calibration, per-species
thresholds and the false alarms of background audio (numpy and scipy; no torch, no scikit-learn).

A long recording is scored window by window; each window may hold no species, one or several. Every
function takes arrays of the same three shapes:

- ``scores (N, C)`` float: the windows' class scores, probabilities in [0, 1] (calibrated or not);
- ``targets (N, C)`` float in {0, 1}: multi-hot truth, 1 where the class sings in the window;
- ``mask (N, C)`` bool: True where the entry counts. False marks an ambiguous entry (a call that only
  grazes the window, an unknown label): it is left out of every metric and every fit, as neither a
  hit nor a false alarm.

The ranking metrics are BirdCLEF's: the average precision of each class over the windows (its
valid entries ranked by score) and their macro mean, ``cmAP``; the area under the ROC curve likewise.
They equal scikit-learn's ``average_precision_score`` / ``roc_auc_score`` on the valid entries
(``tests/test_detection.py``) and are written here so that ties, masks and empty classes have one
documented meaning. A *detection* is an entry whose score reaches its class's threshold
(``score >= threshold``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.optimize import minimize
from scipy.stats import rankdata

from birdops.scores import scores as activated

# how a class's threshold was decided: its own precision target, the pooled one, its best F1, or the
# false-alarm budget of background audio (:func:`false_alarm_thresholds`)
RULES: tuple[str, ...] = ("precision", "pooled", "max_f1", "false_alarms")
# calibration bounds: a scale outside [0.05, 20] means the logits are degenerate (separable data drives
# the unbounded fit to infinity); a bias past +-30 saturates the sigmoid for any plausible logit
SCALE_BOUNDS: tuple[float, float] = (0.05, 20.0)
BIAS_BOUNDS: tuple[float, float] = (-30.0, 30.0)
_PROBABILITY_CLIP = 1e-12  # log(0) guard in the cross-entropy (a loss of at most 27.6 an entry)


@dataclass(frozen=True)
class Event:
    """One true event: class ``class_index`` sounds from ``start_s`` to ``end_s`` (seconds)."""

    start_s: float
    end_s: float
    class_index: int


# ------------------------------------------------------------------------------------ ground truth
def window_targets(
    starts_s: np.ndarray,
    window_seconds: float,
    events: Sequence[Event],
    num_classes: int,
    min_overlap_s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The truth of windows ``[start, start + window_seconds)``: ``(targets, mask)``, both ``(N, C)``.

    A class is *positive* in a window when one of its events overlaps the window by at least
    ``min(min_overlap_s, the event's length)`` seconds (so a short call wholly inside counts),
    *masked* when its events overlap the window by less but more than 0 (a call cut by the window's
    edge: a model may or may not hear it), and *negative* otherwise. Positive wins over masked.
    """
    starts = np.asarray(starts_s, dtype=np.float64).reshape(-1)  # (N,)
    if window_seconds <= 0 or min_overlap_s < 0 or num_classes < 1:
        raise ValueError("window_seconds must be > 0, min_overlap_s >= 0 and num_classes >= 1")
    targets = np.zeros((len(starts), num_classes))
    partial = np.zeros((len(starts), num_classes), dtype=bool)
    for event in events:
        if not 0 <= event.class_index < num_classes or not event.end_s > event.start_s:
            raise ValueError(f"{event}: needs 0 <= class_index < {num_classes} and end_s > start_s")
        overlap = np.minimum(starts + window_seconds, event.end_s) - np.maximum(starts, event.start_s)  # (N,)
        needed = min(min_overlap_s, event.end_s - event.start_s)
        hit = (overlap > 0) & (overlap >= needed)
        targets[hit, event.class_index] = 1.0
        partial[(overlap > 0) & ~hit, event.class_index] = True
    mask = ~(partial & (targets == 0))
    return targets, mask


# ----------------------------------------------------------------------------------------- ranking
def _checked(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """The three arrays as float64, float64 and bool, after checking they are one ``(N, C)`` shape."""
    s, t, m = np.asarray(scores, np.float64), np.asarray(targets, np.float64), np.asarray(mask, bool)
    if s.ndim != 2 or s.shape != t.shape or s.shape != m.shape:
        raise ValueError(
            f"scores, targets and mask must share one (N, C) shape: {s.shape}, {t.shape}, {m.shape}"
        )
    if not np.isin(t[m], (0.0, 1.0)).all():
        raise ValueError("targets must be 0 or 1 where the mask counts them")
    return s, t, m


def _ranked_counts(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, ...]:
    """At each distinct score, highest first, as a threshold: ``(thresholds, tp, fp)``, all ``(K,)``:
    the true and false detections of ``score >= threshold`` (ties enter together)."""
    order = np.argsort(-scores, kind="stable")  # (M,)
    ranked, hits = scores[order], positive[order].astype(np.int64)
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # (K,)
    tp = np.cumsum(hits)[last_of_tie]
    return ranked[last_of_tie], tp, last_of_tie + 1 - tp


def _average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Step-wise AP of one ranking (scikit-learn's): sum over thresholds of recall gain x precision."""
    _, tp, fp = _ranked_counts(scores, positive)
    recall_gain = np.diff(np.r_[0, tp]) / tp[-1]  # (K,)
    return float(np.sum(recall_gain * tp / (tp + fp)))


def class_average_precision(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> dict[int, float]:
    """Class index -> average precision over that class's valid entries, for every class with at
    least one valid positive (AP is undefined without one): the mean, over the positives, of the
    precision at the positive's score as a threshold (tied scores enter together)."""
    s, t, m = _checked(scores, targets, mask)
    out: dict[int, float] = {}
    for c in range(s.shape[1]):
        valid = m[:, c]
        if t[valid, c].sum() > 0:
            out[c] = _average_precision(s[valid, c], t[valid, c] == 1)
    return out


def cmap(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Macro mean of :func:`class_average_precision` (BirdCLEF's cmAP over windows); NaN when no
    class has a valid positive."""
    per_class = class_average_precision(scores, targets, mask)
    return float(np.mean(list(per_class.values()))) if per_class else math.nan


def roc_auc_macro(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Mean over the classes with valid positives *and* negatives of the ROC AUC of the class's valid
    entries: the chance that a random positive outscores a random negative, ties counting one half
    (Mann-Whitney; equal to the area under the ROC curve). NaN when no class has both."""
    s, t, m = _checked(scores, targets, mask)
    aucs = []
    for c in range(s.shape[1]):
        valid = m[:, c]
        positive = t[valid, c] == 1
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos and n_neg:
            ranks = rankdata(s[valid, c])  # (M,) average ranks of ties, from 1
            aucs.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else math.nan


# -------------------------------------------------------------------------------- at a threshold
class PrecisionRecall(NamedTuple):
    """Micro counts over the valid entries; precision 0 with no detection, recall 0 with no positive."""

    precision: float
    recall: float
    tp: int
    fp: int
    fn: int


def _detections(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``scores >= thresholds`` per class: ``(N, C)`` bool, thresholds ``(C,)``."""
    limits = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if limits.shape != (scores.shape[1],):
        raise ValueError(f"one threshold per class: {scores.shape[1]} expected, got {limits.shape}")
    out: np.ndarray = scores >= limits[None, :]
    return out


def precision_recall_at(
    scores: np.ndarray, targets: np.ndarray, mask: np.ndarray, thresholds: np.ndarray
) -> PrecisionRecall:
    """Precision and recall of the detections ``score >= thresholds[c]`` (``(C,)``), micro over
    every valid entry: ``tp`` detected positives, ``fp`` detected negatives, ``fn`` missed positives."""
    s, t, m = _checked(scores, targets, mask)
    detected, positive = _detections(s, thresholds) & m, (t == 1) & m
    tp = int((detected & positive).sum())
    fp = int((detected & ~positive).sum())
    fn = int((~detected & positive).sum())
    return PrecisionRecall(tp / (tp + fp) if tp + fp else 0.0, tp / (tp + fn) if tp + fn else 0.0, tp, fp, fn)


def flagged_windows(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: the windows where at least one class reaches its threshold (``(C,)``)."""
    s = np.asarray(scores, dtype=np.float64)
    out: np.ndarray = np.any(_detections(s, thresholds), axis=1)
    return out


def background_windows(targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: the background-only windows, with no positive and no masked entry."""
    t, m = np.asarray(targets), np.asarray(mask, dtype=bool)
    out: np.ndarray = m.all(axis=1) & ~(t == 1).any(axis=1)
    return out


def covered_seconds(starts_s: np.ndarray, window_seconds: float) -> float:
    """Seconds of audio the windows ``[start, start + window_seconds)`` cover together (overlapping
    windows counted once): what :func:`false_detections_per_hour` divides by."""
    starts = np.sort(np.asarray(starts_s, dtype=np.float64).reshape(-1))
    if len(starts) == 0:
        return 0.0
    ends = starts + window_seconds
    # each window adds what lies past the end of every earlier one
    reach = np.maximum.accumulate(np.r_[starts[0], ends[:-1]])  # (N,)
    return float(np.sum(ends - np.maximum(starts, reach)))


@dataclass(frozen=True)
class FalseDetections:
    """What the thresholds report on audio with no target species."""

    per_hour: float  # false detections (window x class at or over its threshold) per hour of audio
    flagged_fraction: float  # share of the windows with at least one detection
    false_detections: int
    windows: int
    seconds: float


def false_detections_per_hour(scores: np.ndarray, thresholds: np.ndarray, seconds: float) -> FalseDetections:
    """False alarms of background-only windows: ``scores (N, C)`` of those windows only (see
    :func:`background_windows`), every detection is false; ``seconds`` is the background audio they
    cover (:func:`covered_seconds`; with overlapping windows less than ``N`` windows' length)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or not seconds > 0:
        raise ValueError(
            f"expected (N, C) scores of background windows and seconds > 0, got {s.shape}, {seconds}"
        )
    detected = _detections(s, thresholds)
    count = int(detected.sum())
    flagged = float(detected.any(axis=1).mean()) if len(s) else 0.0
    return FalseDetections(count * 3600.0 / seconds, flagged, count, len(s), float(seconds))


# ------------------------------------------------------------------------------------ calibration
def _mean_bce_and_grad(
    params: np.ndarray, logits: np.ndarray, targets: np.ndarray, mask: np.ndarray, activation: str
) -> tuple[float, np.ndarray]:
    """Mean binary cross-entropy of ``activation(scale * logits + bias)`` over the valid entries and
    its gradient in ``(log scale, bias)`` (the bias's is 0 for a softmax, which ignores it)."""
    scale, bias = math.exp(params[0]), params[1]
    p = np.clip(
        activated(logits, activation, scale, bias), _PROBABILITY_CLIP, 1 - _PROBABILITY_CLIP
    )  # (N, C)
    count = mask.sum()
    loss = -np.sum(np.where(mask, targets * np.log(p) + (1 - targets) * np.log1p(-p), 0.0)) / count
    if activation == "sigmoid":
        dx = np.where(mask, p - targets, 0.0)  # d loss / d (scale * logit + bias), per entry
        return float(loss), np.array([np.sum(dx * scale * logits), np.sum(dx)]) / count
    # a softmax over the classes (and "none", logit 0, for softmax_background): d p_j / d scale =
    # p_j (z_j - sum_k p_k z_k), d p_j / d bias = p_j (1 - sum_k p_k); d loss / d p = (p - t) / (p (1 - p))
    ratio = np.where(mask, (p - targets) / (1 - p), 0.0)  # (N, C)
    centred = logits - np.sum(p * logits, axis=1, keepdims=True)
    dbias = np.sum(ratio * (1 - p.sum(axis=1, keepdims=True))) if activation == "softmax_background" else 0.0
    return float(loss), np.array([np.sum(ratio * centred) * scale, dbias]) / count


def fit_calibration(
    logits: np.ndarray, targets: np.ndarray, mask: np.ndarray, activation: str
) -> tuple[float, float]:
    """Platt scaling shared by every class: ``(scale, bias)`` minimising the mean binary cross-entropy
    of ``activation(scale * logits + bias)`` (``birdops.scores.scores``) against ``targets`` over the
    valid entries; ``logits``, ``targets``, ``mask`` are ``(N, C)``.

    Fitted in ``(log scale, bias)`` by L-BFGS-B from ``(1, 0)`` with exact gradients: deterministic.
    The scale is bounded to :data:`SCALE_BOUNDS` and the bias to :data:`BIAS_BOUNDS`, so separable data
    (whose unbounded optimum is an infinite scale) ends at a bound instead of diverging. For a
    ``softmax`` the bias is 0 (it would shift every class alike) and only the temperature
    ``1 / scale`` is fitted, against the same per-entry cross-entropy.
    """
    z, t, m = _checked(logits, targets, mask)
    if activation not in ("sigmoid", "softmax", "softmax_background") or not m.any():
        raise ValueError(
            f"need an activation sigmoid, softmax or softmax_background ({activation!r}) and at least "
            "one valid entry"
        )
    log_bounds = (math.log(SCALE_BOUNDS[0]), math.log(SCALE_BOUNDS[1]))
    bias_bounds = (0.0, 0.0) if activation == "softmax" else BIAS_BOUNDS
    result = minimize(
        _mean_bce_and_grad,
        np.zeros(2),
        args=(z, t, m, activation),
        jac=True,
        method="L-BFGS-B",
        bounds=[log_bounds, bias_bounds],
    )
    return math.exp(float(result.x[0])), float(result.x[1])


# ------------------------------------------------------------------------------------- thresholds
@dataclass(frozen=True)
class ClassThreshold:
    """One class's threshold, the rule that chose it and what it achieves on the fitting entries."""

    threshold: float  # in [0, 1]: a detection is score >= threshold
    rule: str  # "precision", "pooled", "max_f1" or "false_alarms" (RULES)
    precision: float  # on this class's valid entries (0 with no detection)
    recall: float  # on this class's valid entries (0 with no positive)
    positives: int  # this class's valid positives


@dataclass(frozen=True)
class Thresholds:
    """Per-class thresholds (:func:`choose_thresholds`) and how each was decided."""

    classes: tuple[ClassThreshold, ...]  # one per class, in class order
    pooled: ClassThreshold  # chosen on every class's valid entries together
    settings: dict[str, float]  # the rule's settings by name, in the order to_dict writes them

    @property
    def values(self) -> np.ndarray:
        """The thresholds ``(C,)``, in class order."""
        return np.array([c.threshold for c in self.classes])

    def to_dict(self, labels: Sequence[str]) -> dict[str, Any]:
        """JSON-ready: the settings, the pooled choice and each class's, keyed by label."""
        if len(labels) != len(self.classes):
            raise ValueError(f"{len(labels)} labels for {len(self.classes)} thresholds")
        return self.settings | {
            "pooled": asdict(self.pooled),
            "classes": {label: asdict(c) for label, c in zip(labels, self.classes, strict=True)},
        }


def _pick_threshold(scores: np.ndarray, positive: np.ndarray, target_precision: float) -> tuple[float, str]:
    """``(threshold, rule)`` on one ranking with at least one positive: the lowest score of a
    positive whose threshold gives precision >= ``target_precision`` (the most recall that precision
    allows), else the one with the best F1 (ties: the higher threshold)."""
    thresholds, tp, fp = _ranked_counts(scores, positive)
    candidates = np.diff(np.r_[0, tp]) > 0  # thresholds that take in a positive
    precision = tp / (tp + fp)
    reaching = np.flatnonzero(candidates & (precision >= target_precision))
    if len(reaching):
        return float(np.clip(thresholds[reaching[-1]], 0.0, 1.0)), "precision"
    f1 = np.where(candidates, 2 * tp / (tp + fp + tp[-1]), -1.0)  # 2 TP / (2 TP + FP + FN)
    return float(np.clip(thresholds[int(np.argmax(f1))], 0.0, 1.0)), "max_f1"


def _achieved(threshold: float, rule: str, scores: np.ndarray, positive: np.ndarray) -> ClassThreshold:
    detected = scores >= threshold
    tp, n_detected, n_positive = int((detected & positive).sum()), int(detected.sum()), int(positive.sum())
    precision = tp / n_detected if n_detected else 0.0
    return ClassThreshold(threshold, rule, precision, tp / n_positive if n_positive else 0.0, n_positive)


def choose_thresholds(
    scores: np.ndarray, targets: np.ndarray, mask: np.ndarray, target_precision: float, min_positives: int
) -> Thresholds:
    """One threshold per class, chosen on ``scores (N, C)`` (calibrated validation windows).

    A class with at least ``min_positives`` valid positives gets the lowest threshold (a score of
    one of its positives) at which its precision is at least ``target_precision``, i.e. the most
    recall at that precision (rule ``"precision"``); when no threshold reaches it, the threshold of
    its best F1 (``"max_f1"``), but never below the pooled one: a species the model cannot tell apart
    at the target precision must not become the main source of false detections (it then takes the
    pooled threshold). A class with fewer positives takes the *pooled* threshold (rule
    ``"pooled"``), chosen the same way on every class's valid entries together. Each class records the
    precision and recall its threshold achieves on its own entries. ValueError when no class has a
    valid positive (nothing to choose from).
    """
    s, t, m = _checked(scores, targets, mask)
    if not 0 < target_precision <= 1 or min_positives < 1:
        raise ValueError("target_precision must be in (0, 1] and min_positives >= 1")
    if not (t[m] == 1).any():
        raise ValueError("no valid positive entry: thresholds cannot be chosen")
    pooled_scores, pooled_positive = s[m], t[m] == 1
    pooled_choice = _pick_threshold(pooled_scores, pooled_positive, target_precision)
    pooled = _achieved(*pooled_choice, pooled_scores, pooled_positive)
    classes = []
    for c in range(s.shape[1]):
        column, positive = s[m[:, c], c], t[m[:, c], c] == 1
        threshold, rule = pooled.threshold, "pooled"
        if positive.sum() >= min_positives:
            own, own_rule = _pick_threshold(column, positive, target_precision)
            if own_rule == "precision" or own >= pooled.threshold:
                threshold, rule = own, own_rule
        classes.append(_achieved(threshold, rule, column, positive))
    settings = {"target_precision": target_precision, "min_positives": min_positives}
    return Thresholds(tuple(classes), pooled, settings)


def false_alarm_thresholds(
    scores: np.ndarray, targets: np.ndarray, mask: np.ndarray, max_background_flagged: float
) -> Thresholds:
    """One threshold for every class, from a false-alarm budget: the lowest at which at most
    ``max_background_flagged`` of the background-only windows (:func:`background_windows`) of
    ``scores (N, C)`` (calibrated validation windows) hold a detection of any class.

    This is how a field recogniser's threshold is set (one number a user can trust on audio
    without the species): the windows that decide it are the ones a field recording is mostly made
    of, where a precision target decides on the few windows with a species and lets each species'
    false alarms add up over the quiet hours. Each class records the precision and recall the
    threshold achieves on its valid entries, the pooled choice on all of them (rule
    ``"false_alarms"``). Thresholds stay in [0, 1], so a window scored 1.0 is flagged whatever the
    budget. ValueError without a background-only window or with a budget outside [0, 1).
    """
    s, t, m = _checked(scores, targets, mask)
    if not 0 <= max_background_flagged < 1:
        raise ValueError("max_background_flagged must be in [0, 1)")
    quiet = background_windows(t, m)
    if not quiet.any():
        raise ValueError("no background-only window: a false-alarm budget cannot be applied")
    top = np.sort(s[quiet].max(axis=1))  # (Q,) each quiet window's highest score, ascending
    allowed = math.floor(max_background_flagged * len(top) + 1e-9)  # windows that may reach it
    # just above the highest top score that must stay quiet: every window at or below it does (ties
    # too), so at most `allowed` windows reach the threshold
    threshold = min(float(np.nextafter(top[len(top) - allowed - 1], np.inf)), 1.0)
    pooled = _achieved(threshold, "false_alarms", s[m], t[m] == 1)
    classes = tuple(
        _achieved(threshold, "false_alarms", s[m[:, c], c], t[m[:, c], c] == 1) for c in range(s.shape[1])
    )
    return Thresholds(classes, pooled, {"max_background_flagged": max_background_flagged})


# ---------------------------------------------------------------------------------- reliability
def expected_calibration_error(
    scores: np.ndarray, targets: np.ndarray, mask: np.ndarray, bins: int = 15
) -> float:
    """Top-label expected calibration error over windows, in [0, 1].

    Each window claims its highest-scoring class (ties: the lowest index); its *confidence* is that
    score and it is *correct* when the class is a positive there. A window whose claimed class is
    masked (or that has no valid entry) is left out: its claim can be neither right nor wrong. The
    windows are grouped by confidence into ``bins`` equal-width bins over [0, 1] (1.0 in the last);
    the error is the mean over windows of ``|accuracy - mean confidence|`` of their bin:
    ``sum_b n_b / n * |acc_b - conf_b|``. 0 for perfectly calibrated scores (up to sampling noise);
    an overconfident model's confidences exceed its accuracies. NaN when no window counts.

    With a sigmoid, a background-only window's claim is always wrong, so low top scores there are
    what calibration asks for.
    """
    s, t, m = _checked(scores, targets, mask)
    if bins < 1:
        raise ValueError("bins must be >= 1")
    top = np.argmax(s, axis=1)  # (N,)
    rows = np.arange(len(s))
    counted = m[rows, top]
    confidence, correct = s[rows, top][counted], t[rows, top][counted]  # (M,)
    if len(confidence) == 0:
        return math.nan
    which = np.minimum((np.clip(confidence, 0.0, 1.0) * bins).astype(np.int64), bins - 1)  # (M,)
    n = np.bincount(which, minlength=bins)
    gap = np.abs(
        np.bincount(which, correct, bins) - np.bincount(which, confidence, bins)
    )  # n_b |acc_b - conf_b|
    return float(gap.sum() / n.sum())
