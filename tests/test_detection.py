"""detection: window truth from events, cmAP / ROC AUC against scikit-learn, counts at thresholds,
false alarms on background, calibration that recovers the model the data came from, thresholds that
meet their precision, and the calibration error of calibrated and overconfident scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from birdops.detection import (
    SCALE_BOUNDS,
    Event,
    background_windows,
    choose_thresholds,
    class_average_precision,
    cmap,
    covered_seconds,
    expected_calibration_error,
    false_alarm_thresholds,
    false_detections_per_hour,
    fit_calibration,
    flagged_windows,
    precision_recall_at,
    roc_auc_macro,
    window_targets,
)
from birdops.scores import scores as activated
from birdops.scores import sigmoid, softmax


# ------------------------------------------------------------------------------------ ground truth
def test_window_targets_positive_masked_and_negative() -> None:
    starts = np.array([0.0, 2.0, 4.0, 6.0])  # windows of 4 s every 2 s
    events = [
        Event(1.0, 2.5, 0),  # 1.5 s call: in [0, 4) wholly, in [2, 6) by 0.5 s
        Event(7.8, 12.0, 1),  # grazes [4, 8) by 0.2 s, overlaps [6, 10) by 2.2 s
        Event(5.0, 5.3, 2),  # a 0.3 s note wholly inside [2, 6) and [4, 8): shorter than min_overlap
    ]
    targets, mask = window_targets(starts, 4.0, events, num_classes=3, min_overlap_s=1.0)
    np.testing.assert_array_equal(targets, [[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0]])
    # masked: class 0 in [2, 6) (0.5 s < 1 s), class 1 in [4, 8) (0.2 s)
    np.testing.assert_array_equal(~mask, [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_a_positive_event_wins_over_a_grazing_one_and_bad_events_are_refused() -> None:
    events = [Event(0.0, 3.0, 0), Event(3.9, 6.0, 0)]  # the second grazes [0, 4) by 0.1 s
    targets, mask = window_targets(np.array([0.0]), 4.0, events, num_classes=1, min_overlap_s=0.5)
    assert targets[0, 0] == 1 and mask[0, 0]
    with pytest.raises(ValueError, match="class_index"):
        window_targets(np.array([0.0]), 4.0, [Event(0.0, 1.0, 3)], num_classes=2, min_overlap_s=0.5)
    with pytest.raises(ValueError, match="end_s > start_s"):
        window_targets(np.array([0.0]), 4.0, [Event(1.0, 1.0, 0)], num_classes=2, min_overlap_s=0.5)


# ----------------------------------------------------------------------------------------- ranking
def test_average_precision_of_a_hand_ranking() -> None:
    # ranked: pos (0.9), neg (0.8), pos (0.7), neg (0.1): AP = (1/1 + 2/3) / 2
    scores = np.array([[0.9], [0.8], [0.7], [0.1]])
    targets = np.array([[1.0], [0.0], [1.0], [0.0]])
    mask = np.ones_like(targets, dtype=bool)
    assert class_average_precision(scores, targets, mask) == {0: pytest.approx(5 / 6)}
    mask[1, 0] = False  # the negative at 0.8 is ambiguous: perfect ranking
    assert cmap(scores, targets, mask) == pytest.approx(1.0)
    assert roc_auc_macro(scores, targets, mask) == pytest.approx(1.0)


def random_problem(seed: int, n: int = 300, c: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores with ties (rounded to 0.05), multi-hot targets, ~15% masked; class 4 has no positive."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.2).astype(np.float64)
    targets[:, 4] = 0
    scores = np.round(np.clip(0.3 * targets + rng.random((n, c)) * 0.7, 0, 1) / 0.05) * 0.05
    mask = rng.random((n, c)) > 0.15
    return scores, targets, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_metrics_equal_scikit_learn_on_the_valid_entries(seed: int) -> None:
    scores, targets, mask = random_problem(seed)
    per_class = class_average_precision(scores, targets, mask)
    assert set(per_class) == {0, 1, 2, 3, 5}  # class 4: no positive, no AP
    aucs = []
    for c, ap in per_class.items():
        valid = mask[:, c]
        assert ap == pytest.approx(average_precision_score(targets[valid, c], scores[valid, c]), abs=1e-12)
        aucs.append(roc_auc_score(targets[valid, c], scores[valid, c]))
    assert cmap(scores, targets, mask) == pytest.approx(np.mean(list(per_class.values())), abs=1e-12)
    assert roc_auc_macro(scores, targets, mask) == pytest.approx(np.mean(aucs), abs=1e-12)


def test_no_positive_anywhere_gives_nan_and_shapes_are_checked() -> None:
    zeros = np.zeros((3, 2))
    assert math.isnan(cmap(zeros, zeros, np.ones((3, 2), bool)))
    assert math.isnan(roc_auc_macro(zeros, zeros, np.ones((3, 2), bool)))
    with pytest.raises(ValueError, match="one \\(N, C\\) shape"):
        cmap(zeros, np.zeros((3, 3)), np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="0 or 1"):
        cmap(zeros, np.full((3, 2), 0.5), np.ones((3, 2), bool))


# -------------------------------------------------------------------------------- at a threshold
def test_precision_recall_at_counts_micro_over_valid_entries() -> None:
    scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.3, 0.4], [0.8, 0.1]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=float)
    mask = np.ones((4, 2), bool)
    mask[3, 0] = False  # the false 0.8 is ambiguous
    result = precision_recall_at(scores, targets, mask, np.array([0.5, 0.7]))
    # class 0: detects 0.9 (tp), 0.6 (fp); misses 0.3 (fn). class 1: 0.7 (tp, at the threshold); misses 0.1
    assert result == (pytest.approx(2 / 3), pytest.approx(2 / 4), 2, 1, 2)
    none = precision_recall_at(scores, targets, mask, np.array([1.0, 1.0]))
    assert none == (0.0, 0.0, 0, 0, 4)


def test_false_detections_on_background_windows() -> None:
    scores = np.array([[0.9, 0.8], [0.1, 0.2], [0.6, 0.1], [0.2, 0.3], [0.95, 0.1]])
    targets = np.array([[0, 0], [0, 0], [0, 0], [0, 0], [1, 0]], dtype=float)
    mask = np.ones((5, 2), bool)
    mask[3, 1] = False
    background = background_windows(targets, mask)
    np.testing.assert_array_equal(background, [True, True, True, False, False])
    thresholds = np.array([0.5, 0.5])
    np.testing.assert_array_equal(flagged_windows(scores, thresholds), [True, False, True, False, True])
    starts = np.array([0.0, 2.0, 4.0])  # 4 s windows every 2 s: 0..8 s
    seconds = covered_seconds(starts, 4.0)
    assert seconds == pytest.approx(8.0)
    result = false_detections_per_hour(scores[background], thresholds, seconds)
    assert result.false_detections == 3 and result.windows == 3  # (0.9, 0.8) and 0.6
    assert result.per_hour == pytest.approx(3 * 3600 / 8)
    assert result.flagged_fraction == pytest.approx(2 / 3)


def test_covered_seconds_counts_overlaps_once() -> None:
    assert covered_seconds(np.array([10.0, 0.0, 1.0, 30.0]), 4.0) == pytest.approx(5.0 + 4.0 + 4.0)
    assert covered_seconds(np.array([]), 4.0) == 0.0


# ------------------------------------------------------------------------------------ calibration
def test_sigmoid_calibration_recovers_the_model_the_data_came_from() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 3.0, size=(4000, 5))
    true_scale, true_bias = 0.6, -1.2
    targets = (rng.random(logits.shape) < sigmoid(true_scale * logits + true_bias)).astype(float)
    mask = rng.random(logits.shape) > 0.1
    scale, bias = fit_calibration(logits, targets, mask, "sigmoid")
    assert scale == pytest.approx(true_scale, rel=0.05)
    assert bias == pytest.approx(true_bias, abs=0.08)
    assert (scale, bias) == fit_calibration(logits, targets, mask, "sigmoid")  # deterministic


def test_softmax_calibration_recovers_the_temperature() -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(0.0, 4.0, size=(4000, 6))
    true_scale = 0.4  # temperature 2.5: the raw logits are overconfident
    p = softmax(true_scale * logits)
    labels = (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)
    targets = np.eye(6)[labels]
    scale, bias = fit_calibration(logits, targets, np.ones_like(targets, bool), "softmax")
    assert scale == pytest.approx(true_scale, rel=0.05) and bias == 0.0


def test_background_softmax_calibration_recovers_scale_and_bias() -> None:
    """A softmax over the classes and "none" (logit 0): the bias moves the classes against "none"."""
    rng = np.random.default_rng(6)
    logits = rng.normal(0.0, 3.0, size=(6000, 4))
    true_scale, true_bias = 0.5, -1.5
    p = activated(logits, "softmax_background", true_scale, true_bias)  # (N, 4), rows sum below 1
    full = np.concatenate([p, 1 - p.sum(axis=1, keepdims=True)], axis=1)
    drawn = (full.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)
    targets = np.eye(5)[drawn][:, :4]  # a window of "none" has no positive
    scale, bias = fit_calibration(logits, targets, np.ones_like(targets, bool), "softmax_background")
    assert scale == pytest.approx(true_scale, rel=0.08) and bias == pytest.approx(true_bias, abs=0.15)


def test_separable_data_gives_a_large_scale_within_the_bound() -> None:
    """The unbounded optimum is an infinite scale; the fit stops at a finite one, no larger than the
    bound, where every entry's loss is already negligible."""
    logits = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    targets = np.array([[0.0], [0.0], [1.0], [1.0]])
    scale, bias = fit_calibration(logits, targets, np.ones_like(targets, bool), "sigmoid")
    assert 10.0 < scale <= SCALE_BOUNDS[1] and abs(bias) < 1.0
    fitted = sigmoid(scale * logits + bias)
    assert np.all(np.abs(fitted - targets) < 1e-3)
    with pytest.raises(ValueError, match="activation"):
        fit_calibration(logits, targets, np.ones_like(targets, bool), "relu")


# ------------------------------------------------------------------------------------- thresholds
def test_thresholds_by_hand() -> None:
    # class 0 ranked: P .95, P .9, N .8, P .7, N .6, P .5 (4 positives)
    # class 1: one positive (fewer than min_positives): the pooled threshold
    scores = np.array([[0.95, 0.1], [0.9, 0.2], [0.8, 0.99], [0.7, 0.3], [0.6, 0.15], [0.5, 0.05]])
    targets = np.array([[1, 0], [1, 0], [0, 1], [1, 0], [0, 0], [1, 0]], dtype=float)
    mask = np.ones_like(targets, bool)
    chosen = choose_thresholds(scores, targets, mask, target_precision=0.75, min_positives=2)
    first, second = chosen.classes
    # precision at the positives: .95 -> 1, .9 -> 1, .7 -> 3/4, .5 -> 4/6: the lowest >= .75 is 0.7
    assert (first.threshold, first.rule, first.positives) == (0.7, "precision", 4)
    assert (first.precision, first.recall) == (pytest.approx(0.75), pytest.approx(0.75))
    # pooled ranking: .99 P, .95 P, .9 P, .8 N, .7 P, .6 N, .5 P, ...: precision 4/5 at 0.7, 5/7 at 0.5
    assert (chosen.pooled.threshold, chosen.pooled.rule) == (0.7, "precision")
    assert (second.threshold, second.rule, second.precision, second.recall) == (0.7, "pooled", 1.0, 1.0)
    np.testing.assert_array_equal(chosen.values, [0.7, 0.7])
    perfect = choose_thresholds(scores, targets, mask, target_precision=1.0, min_positives=2)
    assert (perfect.classes[0].threshold, perfect.classes[0].rule) == (0.9, "precision")
    # N .9, P .8, N .7, P .6: precision 1/2 then 2/4, never 0.9; F1 1/2 at 0.8, 2/3 at 0.6
    unreachable = np.array([[0.9], [0.8], [0.7], [0.6]]), np.array([[0.0], [1.0], [0.0], [1.0]])
    best_f1 = choose_thresholds(*unreachable, np.ones((4, 1), bool), target_precision=0.9, min_positives=2)
    assert (best_f1.classes[0].threshold, best_f1.classes[0].rule) == (0.6, "max_f1")
    assert (best_f1.classes[0].precision, best_f1.classes[0].recall) == (0.5, 1.0)
    # beside a class that reaches the target, the unreachable class's best-F1 threshold (0.6) would
    # flag more than the pooled one (ranked .95 P, .9 N, .85 P, ...: 0.95): it takes the pooled one
    clean = np.array([[0.95], [0.85], [0.3], [0.2]]), np.array([[1.0], [1.0], [0.0], [0.0]])
    both = np.hstack([unreachable[0], clean[0]]), np.hstack([unreachable[1], clean[1]])
    floored = choose_thresholds(*both, np.ones((4, 2), bool), target_precision=0.9, min_positives=2)
    assert floored.pooled.threshold == 0.95
    assert (floored.classes[0].threshold, floored.classes[0].rule) == (0.95, "pooled")
    assert (floored.classes[1].threshold, floored.classes[1].rule) == (0.85, "precision")
    report = chosen.to_dict(["Turdus merula", "Parus major"])
    assert report["classes"]["Parus major"]["rule"] == "pooled" and report["pooled"]["threshold"] == 0.7


@pytest.mark.parametrize("target_precision", [0.6, 0.8, 0.9])
def test_thresholds_meet_the_target_precision_on_their_own_data(target_precision: float) -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(-2.0, 2.0, size=(2000, 8)) + 4.0 * (rng.random((2000, 8)) < 0.1)
    targets = (rng.random(logits.shape) < sigmoid(logits)).astype(float)
    targets[:, 7] = 0
    targets[:3, 7] = 1  # a rare class: 3 positives, fewer than min_positives
    mask = rng.random(logits.shape) > 0.05
    scores = sigmoid(logits)
    chosen = choose_thresholds(scores, targets, mask, target_precision, min_positives=10)
    assert chosen.classes[7].rule == "pooled"
    for c, decided in enumerate(chosen.classes[:7]):
        assert decided.rule == "precision"
        valid = mask[:, c]
        detected = scores[valid, c] >= decided.threshold
        achieved = targets[valid, c][detected].mean()
        assert achieved >= target_precision and decided.precision == pytest.approx(achieved)
        # the lowest such threshold: one positive lower, the precision falls under the target
        below = np.sort(scores[valid, c][(targets[valid, c] == 1) & ~detected])
        if len(below):
            assert targets[valid, c][scores[valid, c] >= below[-1]].mean() < target_precision
    pooled = precision_recall_at(scores, targets, mask, np.full(8, chosen.pooled.threshold))
    assert pooled.precision >= target_precision


def test_false_alarm_threshold_by_hand() -> None:
    # five background-only windows (top scores .9, .6, .6, .3, .1), one window with class 0 at .7
    scores = np.array([[0.9, 0.2], [0.1, 0.6], [0.6, 0.5], [0.3, 0.1], [0.05, 0.1], [0.7, 0.4]])
    targets = np.zeros_like(scores)
    targets[5, 0] = 1
    mask = np.ones_like(scores, bool)
    # 20 %: one of five may be flagged: just above .6 (the two tied .6 windows stay quiet together)
    chosen = false_alarm_thresholds(scores, targets, mask, 0.2)
    assert chosen.pooled.threshold == np.nextafter(0.6, 1.0) and chosen.pooled.rule == "false_alarms"
    np.testing.assert_array_equal(chosen.values, [np.nextafter(0.6, 1.0)] * 2)
    assert (chosen.classes[0].precision, chosen.classes[0].recall) == (0.5, 1.0)  # the .9 and the .7
    assert (chosen.classes[1].positives, chosen.classes[1].precision) == (0, 0.0)
    # 40 %: two may, but the tie at .6 would make three: still just above .6; 60 %: just above .3
    assert false_alarm_thresholds(scores, targets, mask, 0.4).pooled.threshold == np.nextafter(0.6, 1.0)
    assert false_alarm_thresholds(scores, targets, mask, 0.6).pooled.threshold == np.nextafter(0.3, 1.0)
    # none may: above the highest, which also silences the species window (.7 < .9)
    silent = false_alarm_thresholds(scores, targets, mask, 0.0)
    assert silent.pooled.threshold == np.nextafter(0.9, 1.0) and silent.pooled.recall == 0.0
    report = chosen.to_dict(["Turdus merula", "Parus major"])
    assert report["max_background_flagged"] == 0.2 and "target_precision" not in report
    assert report["classes"]["Turdus merula"]["rule"] == "false_alarms"
    # masked entries make a window ambiguous, not background: it does not count
    masked = mask.copy()
    masked[0, 1] = False
    assert false_alarm_thresholds(scores, targets, masked, 0.25).pooled.threshold == np.nextafter(0.6, 1.0)
    with pytest.raises(ValueError, match="background-only"):
        false_alarm_thresholds(scores[5:], targets[5:], mask[5:], 0.2)
    with pytest.raises(ValueError, match="max_background_flagged"):
        false_alarm_thresholds(scores, targets, mask, 1.0)


@pytest.mark.parametrize("budget", [0.0, 0.01, 0.05, 0.2])
def test_false_alarm_threshold_keeps_the_budget_at_the_lowest_threshold(budget: float) -> None:
    rng = np.random.default_rng(11)
    scores = np.round(rng.random((400, 6)) * 0.98, 2)  # ties among the top scores; none at 1.0
    targets = (rng.random(scores.shape) < 0.05).astype(float)
    mask = np.ones_like(scores, bool)
    quiet = ~(targets == 1).any(axis=1)
    chosen = false_alarm_thresholds(scores, targets, mask, budget)
    threshold = chosen.pooled.threshold
    flagged = (scores[quiet].max(axis=1) >= threshold).mean()
    assert flagged <= budget
    # the lowest: the next top score down would flag more than the budget allows
    below = np.sort(scores[quiet].max(axis=1)[scores[quiet].max(axis=1) < threshold])
    assert (scores[quiet].max(axis=1) >= below[-1]).mean() > budget
    hits = precision_recall_at(scores, targets, mask, chosen.values)
    assert chosen.pooled.recall == pytest.approx(hits.recall)


def test_thresholds_need_a_positive() -> None:
    zeros = np.zeros((4, 2))
    with pytest.raises(ValueError, match="no valid positive"):
        choose_thresholds(zeros, zeros, np.ones((4, 2), bool), 0.9, 1)


# ---------------------------------------------------------------------------------- reliability
def test_ece_by_hand() -> None:
    scores = np.array([[0.9, 0.1], [0.8, 0.3], [0.2, 0.35], [0.7, 0.6]])
    targets = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], dtype=float)
    mask = np.ones_like(targets, bool)
    mask[3, 0] = False  # the last window claims a masked class: left out
    # 2 bins: [0, .5): 0.35 correct; [.5, 1]: 0.9 correct, 0.8 wrong
    expected = (1 * abs(1 - 0.35) + 2 * abs(0.5 - 0.85)) / 3
    assert expected_calibration_error(scores, targets, mask, bins=2) == pytest.approx(expected)


def test_ece_is_near_zero_when_calibrated_and_larger_when_overconfident() -> None:
    rng = np.random.default_rng(6)
    logits = rng.normal(0.0, 2.0, size=(20000, 5))
    p = softmax(logits)
    labels = (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)
    targets, mask = np.eye(5)[labels], np.ones((len(p), 5), bool)
    calibrated = expected_calibration_error(p, targets, mask)
    overconfident = expected_calibration_error(activated(logits, "softmax", 3.0), targets, mask)
    assert calibrated < 0.02 and overconfident > 0.1
    assert math.isnan(expected_calibration_error(p[:1], targets[:1], ~mask[:1]))
