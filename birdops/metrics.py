"""Classification metrics, the one definition training's validation and evaluation both use
(numpy + scikit-learn): from scores ``(N, C)`` and integer labels ``(N,)``, or, where the argmax was
already taken (the trainer takes it on the device, before gathering ranks), from predicted classes.

Scores are logits or probabilities. Accuracy, top-k and F1 only depend on each row's order, which a
softmax keeps; average precision ranks the samples of one class *across rows*, so it is computed on
probabilities: rows that already are probability distributions are used as they are, any other
scores are passed through a row softmax first (:func:`to_probabilities`).

Definitions (also in ``docs/architecture.md``, "Metrics"):
- ``accuracy``: share of samples whose highest score is their label (ties: the lowest class index).
- ``top5_accuracy``: share of samples whose label is among their ``k = min(5, C)`` highest scores.
- ``f1_macro``: unweighted mean of the per-class F1 over the classes that occur in the labels *or*
  the predictions (scikit-learn's default); a class with no predicted or no true sample has F1 0.
- ``f1_weighted``: mean of the per-class F1 weighted by support (true samples per class).
- ``map``: mean over the classes present in the labels of the one-vs-rest average precision of that
  class's probability column (``sklearn.metrics.average_precision_score``: the precision at each
  true sample's rank, averaged). Classes absent from the labels have no positive sample, so their AP
  is undefined; they are left out of the mean (and reported as NaN per class).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from birdops.scores import softmax

TOP_K = 5
# a row is taken as a probability distribution when it is >= 0 and sums to 1 within this tolerance
PROBABILITY_SUM_TOLERANCE = 1e-3


NOT_AVAILABLE = "n/a"  # a per-class figure of a class without examples in the split


@dataclass(frozen=True)
class Summary:
    """The headline metrics of one evaluation (all in [0, 1]); see the module docstring."""

    accuracy: float
    top5_accuracy: float
    f1_macro: float
    f1_weighted: float
    map: float

    def to_dict(self) -> dict[str, float]:
        return {name: round(float(value), 6) for name, value in asdict(self).items()}


@dataclass(frozen=True)
class PerClass:
    """Per-class table, one entry per class index ``0..C-1``: arrays of shape ``(C,)``."""

    labels: tuple[str, ...]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray  # int64, true samples per class
    average_precision: np.ndarray  # NaN for classes absent from the labels

    def rows(self) -> list[dict[str, object]]:
        """One dict per class: ``label, support, precision, recall, f1, average_precision``.

        A class with no example in the split has no recall, F1 or AP: ``"n/a"``, as the headline
        macro averages leave it out (its precision is still defined when it was predicted)."""

        def number(values: np.ndarray, i: int) -> float | str:
            return round(float(values[i]), 6) if self.support[i] > 0 else NOT_AVAILABLE

        return [
            {
                "label": label,
                "support": int(self.support[i]),
                "precision": round(float(self.precision[i]), 6),
                "recall": number(self.recall, i),
                "f1": number(self.f1, i),
                "average_precision": number(self.average_precision, i),
            }
            for i, label in enumerate(self.labels)
        ]


def check_inputs(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` as float64 ``(N, C)`` and ``labels`` as int64 ``(N,)``; raises ValueError otherwise."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"expected scores (N, C) and labels (N,), got {scores.shape} and {labels.shape}")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError("cannot compute metrics on an empty set")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"labels must be in [0, {scores.shape[1]}), got [{labels.min()}, {labels.max()}]")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values")
    return scores, labels.astype(np.int64)


def is_probability(scores: np.ndarray) -> bool:
    """Whether every row of ``scores`` is non-negative and sums to 1."""
    return bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=PROBABILITY_SUM_TOLERANCE))


def to_probabilities(scores: np.ndarray) -> np.ndarray:
    """``scores`` unchanged when they are probabilities already, else their row softmax."""
    return scores if is_probability(scores) else softmax(scores)


def predictions(scores: np.ndarray) -> np.ndarray:
    """Predicted class per row ``(N,)``: the highest score, ties to the lowest class index."""
    return np.asarray(np.argmax(scores, axis=1), dtype=np.int64)


def check_predictions(predicted: np.ndarray, labels: np.ndarray) -> None:
    """Raise ValueError unless ``predicted`` and ``labels`` are two integer arrays ``(N,)``."""
    if predicted.ndim != 1 or predicted.shape != labels.shape:
        shapes = f"{predicted.shape} and {labels.shape}"
        raise ValueError(f"expected predictions (N,) and labels (N,), got {shapes}")
    for name, values in (("predictions", predicted), ("labels", labels)):
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must be integers, got {values.dtype}")


def accuracy_of_predictions(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose predicted class ``(N,)`` is their label ``(N,)``."""
    check_predictions(predicted, labels)
    return float(np.mean(predicted == labels))


def f1_macro_of_predictions(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 over the classes in ``labels`` or ``predicted``
    (scikit-learn's default set; a class with no predicted or no true sample counts 0)."""
    check_predictions(predicted, labels)
    return float(f1_score(labels, predicted, average="macro", zero_division=0))


def f1_weighted_of_predictions(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the per-class F1 weighted by support (true samples per class)."""
    check_predictions(predicted, labels)
    return float(f1_score(labels, predicted, average="weighted", zero_division=0))


# the bootstrap's forms (birdops.evaluate.uncertainty): accuracy and F1 macro of predictions from class
# counts, fast enough for thousands of resamples; tests/test_metrics.py holds them equal to the forms above
CountedMetric = Callable[[np.ndarray, np.ndarray, int], float]  # (predicted, labels, num_classes) -> value


def accuracy_counted(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """:func:`accuracy_of_predictions` without its checks (0 for no samples)."""
    return float(np.mean(predicted == labels)) if len(labels) else 0.0


def f1_macro_counted(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """:func:`f1_macro_of_predictions` from counts: the classes present in the labels or the
    predictions, ``zero_division=0``."""
    true_positive = np.bincount(labels[predicted == labels], minlength=num_classes)
    support = np.bincount(labels, minlength=num_classes)
    predicted_count = np.bincount(predicted, minlength=num_classes)
    present = (support + predicted_count) > 0
    denominator = support + predicted_count
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros(num_classes), where=denominator > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose top-scoring class is the label."""
    scores, labels = check_inputs(scores, labels)
    return accuracy_of_predictions(predictions(scores), labels)


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = TOP_K) -> float:
    """Share of rows whose label is among the ``min(k, C)`` highest scores (ties: lower index first)."""
    scores, labels = check_inputs(scores, labels)
    k = min(k, scores.shape[1])
    # stable sort of the negated scores: equal scores keep index order, as argmax does
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (N, k)
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def average_precision_per_class(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One-vs-rest average precision of each class ``(C,)`` on probabilities; NaN where a class
    has no true sample."""
    scores, labels = check_inputs(scores, labels)
    probs = to_probabilities(scores)
    ap = np.full(scores.shape[1], np.nan)
    for c in np.unique(labels):
        ap[c] = average_precision_score(labels == c, probs[:, c])
    return ap


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean of :func:`average_precision_per_class` over the classes present in ``labels``."""
    return float(np.nanmean(average_precision_per_class(scores, labels)))


def summarize(scores: np.ndarray, labels: np.ndarray) -> Summary:
    """Accuracy, top-5 accuracy, F1 macro and weighted, and mAP of ``scores`` against ``labels``."""
    scores, labels = check_inputs(scores, labels)
    predicted = predictions(scores)
    return Summary(
        accuracy=accuracy(scores, labels),
        top5_accuracy=top_k_accuracy(scores, labels, TOP_K),
        f1_macro=f1_macro_of_predictions(predicted, labels),
        f1_weighted=f1_weighted_of_predictions(predicted, labels),
        map=mean_average_precision(scores, labels),
    )


def per_class(scores: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> PerClass:
    """Precision, recall, F1, support and average precision of every class in ``names`` (index order).

    Precision of a class that is never predicted (and recall of one that never occurs) is 0.
    """
    scores, labels = check_inputs(scores, labels)
    if len(names) != scores.shape[1]:
        raise ValueError(f"{len(names)} class names for {scores.shape[1]} score columns")
    classes = np.arange(scores.shape[1])
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions(scores), labels=classes, zero_division=0
    )
    return PerClass(
        labels=tuple(names),
        precision=np.asarray(precision, dtype=np.float64),
        recall=np.asarray(recall, dtype=np.float64),
        f1=np.asarray(f1, dtype=np.float64),
        support=np.asarray(support, dtype=np.int64),
        average_precision=average_precision_per_class(scores, labels),
    )


def confusion_counts(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Confusion matrix ``(C, C)`` int64: row = true class, column = predicted class."""
    scores, labels = check_inputs(scores, labels)
    classes = np.arange(scores.shape[1])
    return np.asarray(confusion_matrix(labels, predictions(scores), labels=classes), dtype=np.int64)


def normalize_rows(counts: np.ndarray) -> np.ndarray:
    """Each row of a confusion matrix divided by its sum (the class's recall profile); rows of
    classes with no true sample stay all zero."""
    totals = counts.sum(axis=1, keepdims=True)
    out: np.ndarray = np.divide(
        counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0
    )
    return out
