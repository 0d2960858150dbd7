"""Calibration of a classifier: expected calibration error and temperature scaling.

"How Well Do Self-Supervised Models Transfer?" (arXiv:2011.13377) reports the ECE (15
equal-width confidence bins) of the linear probe before and after temperature scaling
(Guo et al., ICML 2017). Its code used the unlisted ``netcal`` package, needed a GPU, and
fitted the temperature by cross-validation on the *test* set. Here ECE and the temperature
fit are a few lines of NumPy/PyTorch that run on the CPU, and the temperature is fitted on
a validation split and only then applied to the test logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["calibration_report", "expected_calibration_error", "fit_temperature",
           "negative_log_likelihood", "softmax"]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               n_bins: int = 15) -> float:
    """ECE = sum over bins b of (|B_b| / N) * |accuracy(B_b) - confidence(B_b)|.

    The confidence of an item is its largest class probability; bins are equal-width on
    (0, 1], the first one closed at 0. `probabilities` is (N, C) and `labels` (N,).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if probabilities.ndim != 2 or probabilities.shape[0] != labels.size or labels.size == 0:
        raise ValueError(f"need (N, C) probabilities and N labels, got "
                         f"{probabilities.shape} and {labels.shape}")
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        members = bins == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray,
                            temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against `labels`."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / temperature
    return float(F.cross_entropy(z, torch.as_tensor(np.asarray(labels), dtype=torch.long)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising the NLL of ``softmax(logits / T)`` on (logits,
    labels): L-BFGS on log T in float64, so T stays positive without clamping."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
    if z.ndim != 2 or z.shape[0] != y.numel() or y.numel() == 0:
        raise ValueError(f"need (N, C) logits and N labels, got {tuple(z.shape)} and "
                         f"{tuple(y.shape)}")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, tolerance_grad=1e-10,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def calibration_report(val_logits: np.ndarray, val_labels: np.ndarray,
                       test_logits: np.ndarray, test_labels: np.ndarray,
                       n_bins: int = 15) -> dict[str, Any]:
    """ECE and NLL on the test split before and after temperature scaling, with the
    temperature fitted on the validation split."""
    t = fit_temperature(val_logits, val_labels)
    return {
        "ece": expected_calibration_error(softmax(test_logits), test_labels, n_bins),
        "ece_temperature_scaled": expected_calibration_error(
            softmax(test_logits, t), test_labels, n_bins),
        "temperature": t,
        "nll": negative_log_likelihood(test_logits, test_labels),
        "nll_temperature_scaled": negative_log_likelihood(test_logits, test_labels, t),
        "n_bins": n_bins,
    }
