"""Slide-level classification metrics."""

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


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaNs dropped; sd 0 for one value)."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if not len(finite):
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
