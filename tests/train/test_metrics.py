"""Slide-level metrics (``gigastream.train.metrics``) against hand computations: Brier score,
ECE over 10 equal-width bins and Youden's J threshold, all of the positive (last) class."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gigastream.train.metrics import (
    accuracy_at,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    youden_threshold,
)

#: Six slides, class 1 positive: p(positive) 0.05, 0.15, 0.35 (negatives), 0.32, 0.72, 0.94.
LABELS = [0, 0, 0, 1, 1, 1]
P = np.array([0.05, 0.15, 0.35, 0.32, 0.72, 0.94])
PROBS = np.stack([1 - P, P], axis=1)


def test_brier_score_by_hand():
    squares = [0.05**2, 0.15**2, 0.35**2, 0.68**2, 0.28**2, 0.06**2]
    assert brier_score(LABELS, PROBS) == pytest.approx(sum(squares) / 6, abs=1e-15)
    assert brier_score([0, 1], np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0
    assert math.isnan(brier_score([], np.zeros((0, 2))))


def test_ece_by_hand_over_ten_equal_width_bins():
    # bins: [0.0, 0.1): 0.05 (neg); [0.1, 0.2): 0.15 (neg); [0.3, 0.4): 0.35 (neg), 0.32 (pos);
    # [0.7, 0.8): 0.72 (pos); [0.9, 1.0]: 0.94 (pos)
    gaps = [
        1 * abs(0 - 0.05),
        1 * abs(0 - 0.15),
        2 * abs(0.5 - (0.35 + 0.32) / 2),
        1 * abs(1 - 0.72),
        1 * abs(1 - 0.94),
    ]
    assert expected_calibration_error(LABELS, PROBS) == pytest.approx(sum(gaps) / 6, abs=1e-15)
    # 1.0 falls in the last bin; one bin: |fraction positive - mean p|
    ones = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert expected_calibration_error([1, 0], ones) == pytest.approx(0.5)
    # fewer bins merge neighbours: 2 bins [0, 0.5) and [0.5, 1]
    two = (4 * abs(0.25 - (0.05 + 0.15 + 0.35 + 0.32) / 4) + 2 * abs(1 - 0.83)) / 6
    assert expected_calibration_error(LABELS, PROBS, bins=2) == pytest.approx(two, abs=1e-15)


def test_the_positive_class_is_the_last_one():
    """Swapping the class order turns p(positive) into the other column."""
    swapped = PROBS[:, ::-1]
    flipped = [1 - label for label in LABELS]
    assert brier_score(flipped, swapped) == pytest.approx(brier_score(LABELS, PROBS))
    auc = classification_metrics(LABELS, PROBS)["auc"]
    assert classification_metrics(flipped, swapped)["auc"] == pytest.approx(auc)


def test_youden_threshold_by_hand():
    # midpoints of the sorted scores 0.05 0.15 0.32 0.35 0.72 0.94 and Youden's J
    # (TPR - FPR, positive when p >= t): 0.10: 1 - 2/3; 0.235: 1 - 1/3; 0.335: 2/3 - 1/3;
    # 0.535: 2/3 - 0; 0.83: 1/3 - 0. Best J = 2/3 at 0.235 and 0.535: the nearer 0.5 wins.
    assert youden_threshold(LABELS, PROBS) == pytest.approx(0.535)
    # separable: the midpoint of the gap
    separable = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.1, 0.9]])
    assert youden_threshold([0, 0, 1, 1], separable) == pytest.approx(0.4)
    assert accuracy_at(LABELS, PROBS, 0.535) == pytest.approx(5 / 6)  # 0.32 missed
    assert accuracy_at(LABELS, PROBS, 0.5) == pytest.approx(5 / 6)
    assert accuracy_at(LABELS, PROBS, 0.3) == pytest.approx(5 / 6)  # 0.35 called positive
    assert accuracy_at(LABELS, PROBS, 0.1) == pytest.approx(4 / 6)  # 0.15 and 0.35 too


def test_youden_threshold_is_undefined_without_both_classes_or_for_three():
    assert youden_threshold([1, 1, 1], PROBS[3:]) is None
    assert youden_threshold([0, 1], np.array([[0.5, 0.5], [0.5, 0.5]])) is None
    three = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    assert youden_threshold([2, 0], three) is None
