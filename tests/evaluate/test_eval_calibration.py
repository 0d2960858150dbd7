"""ECE and temperature scaling on synthetic logits with known calibration."""

import numpy as np
import pytest

from betaweighter.evaluate.calibration import (
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    softmax,
)


def _sample_labels(rng, probs):
    cum = probs.cumsum(axis=1)
    return (rng.random((len(probs), 1)) > cum).sum(axis=1)


def test_ece_of_perfectly_calibrated_probabilities_is_near_zero():
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(0, 2, size=(50_000, 5)))
    labels = _sample_labels(rng, probs)  # labels drawn from the predicted distribution
    assert expected_calibration_error(probs, labels) < 0.01


def test_ece_of_overconfident_probabilities_is_large():
    probs = np.tile([0.99, 0.01], (1000, 1))
    labels = np.r_[np.zeros(600, int), np.ones(400, int)]  # 60 % right at 99 % confidence
    assert expected_calibration_error(probs, labels) == pytest.approx(0.39)


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, size=(20_000, 4))
    labels = _sample_labels(rng, softmax(logits, temperature=2.5))
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def test_calibration_report_fits_on_val_and_improves_test_ece():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, size=(20_000, 4))
    labels = _sample_labels(rng, softmax(logits, temperature=3.0))
    r = calibration_report(logits[:10_000], labels[:10_000], logits[10_000:], labels[10_000:])
    assert r["temperature"] == pytest.approx(3.0, rel=0.05)
    assert r["ece_temperature_scaled"] < 0.02 < r["ece"]
    assert r["nll_temperature_scaled"] < r["nll"]
