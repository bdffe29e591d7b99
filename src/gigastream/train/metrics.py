"""Slide-level metrics. Classification: ROC AUC and accuracy, a confusion matrix, the
calibration of the positive class's probability (Brier score; expected calibration error,
Guo et al., ICML 2017, over equal-width bins) and a decision threshold by Youden's J
(Youden, Cancer 1950). Regression: Spearman and Pearson correlation, MAE, RMSE and R².

The *positive class* is the last class of the class order (``RunConfig.positive_class``
puts the chosen one there): a binary AUC, the calibration metrics and the threshold are of
``probs[:, -1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def classification_metrics(labels: Sequence[int], probs: np.ndarray) -> dict[str, float]:
    """ROC AUC and accuracy of class probabilities.

    Args:
        labels: class index per slide.
        probs: ``(slides, num_classes)`` softmax probabilities.

    Returns:
        ``auc`` (binary: of the last class's probability; more classes: one-vs-rest macro;
        NaN when only one class is present) and ``accuracy`` (argmax).

    Example:
        >>> classification_metrics([0, 1, 1], np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]))
        {'auc': 1.0, 'accuracy': 0.6666666666666666}
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    accuracy = float((probs.argmax(axis=1) == labels).mean()) if len(labels) else math.nan
    auc = math.nan
    present = np.unique(labels)
    if len(present) > 1:
        if probs.shape[1] == 2:
            auc = float(roc_auc_score(labels, probs[:, 1]))
        elif len(present) == probs.shape[1]:
            auc = float(roc_auc_score(labels, probs, multi_class="ovr"))
    return {"auc": auc, "accuracy": accuracy}


def confusion_matrix(labels: Sequence[int], probs: np.ndarray) -> list[list[int]]:
    """The confusion matrix of argmax predictions: ``matrix[true][predicted]`` slide counts.

    Example:
        >>> confusion_matrix([0, 1, 2, 2], np.eye(3)[[0, 2, 2, 1]])
        [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    """
    probs = np.asarray(probs, dtype=np.float64)
    classes = probs.shape[1] if probs.ndim == 2 else 0
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for true, predicted in zip(labels, probs.argmax(axis=1) if len(probs) else [], strict=True):
        matrix[int(true), int(predicted)] += 1
    return matrix.tolist()


def regression_metrics(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    """How well predicted slide values follow the true ones.

    Returns:
        ``spearman`` and ``pearson`` correlation (NaN with fewer than two slides or a
        constant side), ``mae``, ``rmse`` and ``r2`` (1 - residual / total sum of squares;
        NaN when the targets are constant); all NaN without slides.

    Example:
        >>> m = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.5, 1.8, 3.9, 4.1])
        >>> m["spearman"], round(m["mae"], 3)
        (1.0, 0.425)
    """
    from scipy.stats import pearsonr, spearmanr

    y = np.asarray(targets, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64)
    nan = {"spearman": math.nan, "pearson": math.nan, "mae": math.nan, "rmse": math.nan}
    if not len(y):
        return {**nan, "r2": math.nan}
    result = dict(nan)
    if len(y) > 1 and np.ptp(y) > 0 and np.ptp(p) > 0:
        result["spearman"] = float(spearmanr(y, p).statistic)
        result["pearson"] = float(pearsonr(y, p).statistic)
    result["mae"] = float(np.mean(np.abs(p - y)))
    result["rmse"] = float(np.sqrt(np.mean((p - y) ** 2)))
    total = float(np.sum((y - y.mean()) ** 2))
    result["r2"] = 1.0 - float(np.sum((p - y) ** 2)) / total if total > 0 else math.nan
    return result


def _positive(labels: Sequence[int], probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(is_positive, p_positive)``: whether each slide is of the last class, and the
    last class's probability."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.asarray(labels) == probs.shape[1] - 1, probs[:, -1]


def brier_score(labels: Sequence[int], probs: np.ndarray) -> float:
    """Mean squared error of the positive (last) class's probability against 1/0.

    Args:
        labels: class index per slide.
        probs: ``(slides, num_classes)`` softmax probabilities.

    Returns:
        In [0, 1] (0: certain and right); NaN without slides.

    Example:
        >>> round(brier_score([0, 1], np.array([[0.8, 0.2], [0.4, 0.6]])), 6)  # (0.2² + 0.4²) / 2
        0.1
    """
    is_positive, p = _positive(labels, probs)
    return float(np.mean((p - is_positive) ** 2)) if len(p) else math.nan


def expected_calibration_error(labels: Sequence[int], probs: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the positive (last) class's probability.

    The probabilities are put in ``bins`` equal-width bins (bin ``k`` holds
    ``k / bins <= p < (k + 1) / bins``; 1.0 is in the last); ECE is the slide-weighted mean
    over the non-empty bins of ``|fraction positive - mean p|``.

    Returns:
        In [0, 1] (0: calibrated); NaN without slides.

    Example:
        >>> probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]])
        >>> round(expected_calibration_error([0, 1, 1, 1], probs), 6)  # bins 0.1, 0.3, 0.6, 0.8
        0.35
    """
    is_positive, p = _positive(labels, probs)
    if not len(p):
        return math.nan
    index = np.minimum((p * bins).astype(int), bins - 1)
    error = 0.0
    for k in np.unique(index):
        in_bin = index == k
        error += in_bin.sum() * abs(is_positive[in_bin].mean() - p[in_bin].mean())
    return float(error / len(p))


def youden_threshold(labels: Sequence[int], probs: np.ndarray) -> float | None:
    """The decision threshold on the positive (last) class's probability that maximises
    Youden's J (sensitivity + specificity - 1) on these slides: a slide is called positive
    when ``p >= threshold``.

    The candidates are the midpoints between consecutive distinct probabilities (so a
    slide never sits on the threshold); of equally good ones the nearest to 0.5 is taken.

    Returns:
        The threshold, or ``None`` when it is undefined: fewer than two classes among the
        slides, a task of more than two classes, or all probabilities equal.

    Example:
        >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.2, 0.8]])
        >>> youden_threshold([0, 0, 1, 1], probs)  # between 0.2 (negative) and 0.3 (positive)
        0.25
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != 2:
        return None
    is_positive, p = _positive(labels, probs)
    if is_positive.all() or not is_positive.any():
        return None
    scores = np.unique(p)
    candidates = (scores[:-1] + scores[1:]) / 2
    if not len(candidates):
        return None
    called = p[None, :] >= candidates[:, None]  # (candidates, slides)
    youden = called[:, is_positive].mean(axis=1) - called[:, ~is_positive].mean(axis=1)
    best = np.flatnonzero(np.isclose(youden, youden.max(), rtol=0, atol=1e-12))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def accuracy_at(labels: Sequence[int], probs: np.ndarray, threshold: float) -> float:
    """Accuracy of a binary task when a slide is called positive (the last class) at
    ``p_positive >= threshold``; NaN without slides.

    Example:
        >>> accuracy_at([0, 1], np.array([[0.7, 0.3], [0.6, 0.4]]), 0.35)
        1.0
    """
    is_positive, p = _positive(labels, probs)
    return float(np.mean((p >= threshold) == is_positive)) if len(p) else math.nan


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaNs dropped; sd 0 for one value)."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if not len(finite):
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
