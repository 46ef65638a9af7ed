"""birdops.metrics against values computed by hand on tiny examples."""

from __future__ import annotations

import numpy as np
import pytest

from birdops import metrics as m

# 4 samples, 3 classes, probabilities. Predictions: 0, 1, 1, 2 (sample 1 is a class-0 sample taken for 1).
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # label 0, predicted 0
        [0.3, 0.4, 0.3],  # label 0, predicted 1; 2nd best is class 0 (tie with 2 -> lower index)
        [0.1, 0.6, 0.3],  # label 1, predicted 1
        [0.4, 0.1, 0.5],  # label 2, predicted 2; outranks sample 1 in column 0
    ]
)
LABELS = np.array([0, 0, 1, 2])


def test_accuracy_and_top_k_by_hand() -> None:
    assert m.accuracy(PROBS, LABELS) == pytest.approx(0.75)
    assert m.top_k_accuracy(PROBS, LABELS, k=1) == pytest.approx(0.75)
    assert m.top_k_accuracy(PROBS, LABELS, k=2) == pytest.approx(1.0)
    # top-5 with 3 classes is top-3: always a hit
    assert m.top_k_accuracy(PROBS, LABELS) == pytest.approx(1.0)
    # a tie of the label with a lower-index class: argmax takes the lower index
    tie = np.array([[0.5, 0.5, 0.0]])
    assert m.accuracy(tie, np.array([1])) == 0.0
    assert m.top_k_accuracy(tie, np.array([2]), k=2) == 0.0


def test_f1_by_hand() -> None:
    summary = m.summarize(PROBS, LABELS)
    # class 0: P 1, R 1/2, F1 2/3; class 1: P 1/2, R 1, F1 2/3; class 2: F1 1
    assert summary.f1_macro == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert summary.f1_weighted == pytest.approx((2 * 2 / 3 + 2 / 3 + 1) / 4)
    table = m.per_class(PROBS, LABELS, ["a", "b", "c"])
    np.testing.assert_allclose(table.precision, [1.0, 0.5, 1.0])
    np.testing.assert_allclose(table.recall, [0.5, 1.0, 1.0])
    np.testing.assert_allclose(table.f1, [2 / 3, 2 / 3, 1.0])
    np.testing.assert_array_equal(table.support, [2, 1, 1])


def test_f1_macro_counts_predicted_absent_classes_but_not_unused_ones() -> None:
    # labels 0,0,1; predictions 0,2,1: class 2 is predicted but never true -> F1 0, in the mean;
    # class 3 is neither true nor predicted -> not in the mean
    scores = np.array([[5.0, 0, 0, 0], [0, 0, 5.0, 0], [0, 5.0, 0, 0]])
    summary = m.summarize(scores, np.array([0, 0, 1]))
    assert summary.f1_macro == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_metrics_of_predictions_equal_those_of_the_scores_they_come_from() -> None:
    # the trainer's validation takes the argmax on the device and passes predicted classes: the
    # figures must be the very floats evaluation computes from the scores (ties, absent classes)
    rng = np.random.default_rng(3)
    for _ in range(50):
        scores = rng.integers(0, 3, size=(40, 6)).astype(np.float64)  # many ties
        labels = rng.choice([0, 2, 5], size=40)  # classes 1, 3, 4 absent from the split
        predicted = m.predictions(scores)
        summary = m.summarize(scores, labels)
        assert m.accuracy_of_predictions(predicted, labels) == summary.accuracy == m.accuracy(scores, labels)
        assert m.f1_macro_of_predictions(predicted, labels) == summary.f1_macro
        assert m.f1_weighted_of_predictions(predicted, labels) == summary.f1_weighted


def test_bad_predictions_are_rejected() -> None:
    with pytest.raises(ValueError, match="expected predictions"):
        m.accuracy_of_predictions(np.array([0, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="predictions must be integers"):
        m.f1_macro_of_predictions(np.array([0.0, 1.0]), np.array([0, 1]))


def test_average_precision_by_hand() -> None:
    ap = m.average_precision_per_class(PROBS, LABELS)
    # column 0 ranks: s0 (+), s3 (-), s1 (+), s2 (-) -> (1/1 + 2/3) / 2
    np.testing.assert_allclose(ap, [5 / 6, 1.0, 1.0])
    assert m.mean_average_precision(PROBS, LABELS) == pytest.approx((5 / 6 + 2) / 3)
    assert m.summarize(PROBS, LABELS).map == pytest.approx(17 / 18)


def test_map_leaves_out_classes_absent_from_the_labels() -> None:
    # four columns, class 3 never true: its AP is undefined (NaN) and not averaged
    probs = np.hstack([PROBS * 0.9, np.full((4, 1), 0.1)])
    ap = m.average_precision_per_class(probs, LABELS)
    assert np.isnan(ap[3])
    np.testing.assert_allclose(ap[:3], [5 / 6, 1.0, 1.0])
    assert m.mean_average_precision(probs, LABELS) == pytest.approx(17 / 18)


def test_map_of_logits_is_computed_on_their_softmax() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(30, 5)) * 3
    labels = rng.integers(0, 5, size=30)
    probs = m.softmax(logits)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert m.is_probability(probs) and not m.is_probability(logits)
    assert m.mean_average_precision(logits, labels) == pytest.approx(m.mean_average_precision(probs, labels))
    # the per-column ranking of raw logits differs from that of probabilities here: adding a per-row
    # constant leaves probabilities unchanged but would change a ranking done on the logits
    shifted = logits + rng.normal(size=(30, 1)) * 10
    assert m.mean_average_precision(shifted, labels) == pytest.approx(
        m.mean_average_precision(logits, labels)
    )
    # decisions do not depend on the form
    assert m.summarize(logits, labels).accuracy == m.summarize(probs, labels).accuracy


def test_confusion_counts_and_row_normalisation() -> None:
    counts = m.confusion_counts(PROBS, LABELS)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    with_empty_row = np.array([[2, 2], [0, 0]])
    np.testing.assert_allclose(m.normalize_rows(with_empty_row), [[0.5, 0.5], [0.0, 0.0]])
    np.testing.assert_allclose(m.normalize_rows(counts).sum(axis=1), 1.0)


def test_summary_dict_is_flat_and_rounded() -> None:
    data = m.summarize(PROBS, LABELS).to_dict()
    assert list(data) == ["accuracy", "top5_accuracy", "f1_macro", "f1_weighted", "map"]
    assert data["f1_macro"] == round(7 / 9, 6)


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        (np.zeros((3, 2)), np.array([0, 1]), "expected scores"),
        (np.zeros((0, 2)), np.zeros(0, dtype=int), "empty"),
        (np.zeros((2, 2)), np.array([0.0, 1.0]), "integers"),
        (np.zeros((2, 2)), np.array([0, 2]), "in \\[0, 2\\)"),
        (np.array([[np.nan, 0.0]]), np.array([0]), "NaN"),
    ],
)
def test_bad_inputs_are_rejected(scores: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        m.summarize(scores, labels)


def test_the_counted_forms_equal_the_checked_ones() -> None:
    """The bootstrap's accuracy and F1 macro from class counts give the figures of the scikit-learn
    forms, on predictions with classes absent from the labels and labels never predicted."""
    rng = np.random.default_rng(3)
    for trial in range(200):
        num_classes = int(rng.integers(2, 12))
        size = int(rng.integers(1, 60))
        # every other trial the last class is never a label
        labels = rng.integers(0, num_classes - trial % 2, size)
        predicted = np.where(rng.random(size) < 0.6, labels, rng.integers(0, num_classes, size))
        assert m.accuracy_counted(predicted, labels, num_classes) == m.accuracy_of_predictions(
            predicted, labels
        )
        assert m.f1_macro_counted(predicted, labels, num_classes) == pytest.approx(
            m.f1_macro_of_predictions(predicted, labels), rel=1e-12, abs=1e-15
        )
