"""Exact classification metrics, confidence intervals and the VOC07 11-point AP."""

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from betaweighter.evaluate.metrics import (
    accuracy,
    mean_confidence_interval,
    mean_per_class_accuracy,
    voc07_ap11,
)


def test_accuracy_is_sample_weighted_over_the_whole_split():
    # 130 items in "batches" of 64: per-batch averaging would give (64/64 + 64/64 + 0/2) / 3
    labels = np.zeros(130, dtype=int)
    preds = np.zeros(130, dtype=int)
    preds[-2:] = 1
    assert accuracy(labels, preds) == pytest.approx(128 / 130)


def test_mean_per_class_accuracy_matches_balanced_accuracy():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    p = np.where(rng.random(300) < 0.7, y, rng.integers(0, 5, 300))
    assert mean_per_class_accuracy(y, p) == pytest.approx(balanced_accuracy_score(y, p))
    assert mean_per_class_accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == pytest.approx(0.5)


def test_metrics_reject_mismatched_or_empty_inputs():
    with pytest.raises(ValueError):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError):
        accuracy([], [])


def test_confidence_interval_known_case():
    mean, half = mean_confidence_interval([0.0, 1.0] * 300)
    s = math.sqrt(600 / 599) * 0.5
    assert mean == pytest.approx(0.5)
    assert half == pytest.approx(1.96 * s / math.sqrt(600))
    mean, half = mean_confidence_interval([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and half == pytest.approx(1.96 * 0.2 / math.sqrt(3))


def test_confidence_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        mean, half = mean_confidence_interval(rng.normal(0.7, 0.1, size=600))
        hits += abs(mean - 0.7) <= half
    assert 0.93 < hits / 2000 < 0.97


def test_voc07_ap11_hand_computed_curve():
    # precision 1 up to recall 0.5, then 0.5 up to recall 1
    recall = np.array([0.25, 0.5, 0.5, 0.75, 1.0])
    precision = np.array([1.0, 1.0, 2 / 3, 0.6, 0.5])
    # thresholds 0..0.5 (6 of them) -> 1.0; 0.6, 0.7 -> 0.6; 0.8..1.0 -> 0.5
    assert voc07_ap11(recall, precision) == pytest.approx((6 * 1.0 + 2 * 0.6 + 3 * 0.5) / 11)
    assert voc07_ap11(np.array([0.3]), np.array([1.0])) == pytest.approx(4 / 11)
    assert voc07_ap11(np.array([]), np.array([])) == 0.0
