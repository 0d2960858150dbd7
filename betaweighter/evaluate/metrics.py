"""Classification metrics of the transfer protocols, computed exactly over whole splits.

The original code of "How Well Do Self-Supervised Models Transfer?" (arXiv:2011.13377)
averaged per-batch accuracies and dropped a final partial batch, which weights images
unequally; here every metric is a function of the full label and prediction arrays.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score

__all__ = ["METRICS", "accuracy", "mean_confidence_interval", "mean_per_class_accuracy",
           "voc07_ap11"]


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Top-1 accuracy: the fraction of items whose prediction equals the label."""
    labels, predictions = np.asarray(labels).reshape(-1), np.asarray(predictions).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.size} labels but {predictions.size} predictions")
    if labels.size == 0:
        raise ValueError("accuracy of an empty split is undefined")
    return float(np.mean(labels == predictions))


def mean_per_class_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean over the classes present in `labels` of that class's recall (the paper's
    metric for Aircraft, Caltech101, Flowers and Pets): scikit-learn's
    ``balanced_accuracy_score``. Classes absent from `labels` are not averaged in."""
    labels, predictions = np.asarray(labels).reshape(-1), np.asarray(predictions).reshape(-1)
    accuracy(labels, predictions)  # same checks
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected here
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(labels, predictions))


#: The classification metrics the evaluators select and report by name.
METRICS = {"top1": accuracy, "mean_per_class": mean_per_class_accuracy}


def mean_confidence_interval(values: Sequence[float] | np.ndarray,
                             z: float = 1.96) -> tuple[float, float]:
    """(mean, half-width) of a normal-approximation confidence interval (95 % for z=1.96).

    The half-width is ``z * s / sqrt(n)`` with `s` the sample standard deviation
    (ddof=1). The few-shot code of arXiv:2011.13377 used ddof=0, which is narrower by a
    factor sqrt((n-1)/n): 0.08 % at its 600 episodes.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("no values to average")
    if values.size == 1:
        return float(values[0]), math.nan
    return float(values.mean()), float(z * values.std(ddof=1) / math.sqrt(values.size))


def voc07_ap11(recall: np.ndarray, precision: np.ndarray) -> float:
    """PASCAL VOC 2007 11-point interpolated average precision.

    The mean, over recall thresholds t in {0, 0.1, ..., 1}, of the highest precision
    reached at a recall >= t (0 when the recall never reaches t).
    """
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if recall.shape != precision.shape:
        raise ValueError("recall and precision must have the same length")
    total = 0.0
    for t in np.linspace(0.0, 1.0, 11):
        reached = precision[recall >= t - 1e-12]
        total += float(reached.max()) if reached.size else 0.0
    return total / 11.0
