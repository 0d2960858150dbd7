"""BetaWeights against the Beta distribution's definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Beta, kl_divergence

import betaweighter as bw


def _weights(a, b):
    w = bw.BetaWeights(len(a)).double()
    with torch.no_grad():
        w.log_alpha.copy_(torch.log(torch.as_tensor(a, dtype=torch.float64)))
        w.log_beta.copy_(torch.log(torch.as_tensor(b, dtype=torch.float64)))
    return w


A = [0.5, 1.0, 2.0, 7.0, 30.0]
B = [0.5, 3.0, 2.0, 1.5, 2.0]


def test_mean_std_cdf_match_scipy():
    w = _weights(A, B)
    np.testing.assert_allclose(w.mean().numpy(), stats.beta.mean(A, B), rtol=1e-12)
    np.testing.assert_allclose(w.std().numpy(), stats.beta.std(A, B), rtol=1e-12)
    for value in (0.05, 0.1, 0.5, 0.9):
        np.testing.assert_allclose(w.cdf(value).numpy(), stats.beta.cdf(value, A, B),
                                   rtol=1e-10)
    idx = torch.tensor([3, 0])
    np.testing.assert_allclose(w.cdf(0.3, idx).numpy(), stats.beta.cdf(0.3, [A[3], A[0]],
                                                                       [B[3], B[0]]))


def test_initial_state_is_uniform():
    w = bw.BetaWeights(4)
    torch.testing.assert_close(w.mean(), torch.full((4,), 0.5))
    torch.testing.assert_close(w.cdf(0.1).float(), torch.full((4,), 0.1))


def test_samples_follow_the_distribution_and_are_differentiable():
    w = _weights([2.0] * 4000, [5.0] * 4000)
    torch.manual_seed(0)
    s = w.sample(torch.arange(4000))
    assert s.shape == (4000,) and s.requires_grad
    assert stats.kstest(s.detach().numpy(), stats.beta(2.0, 5.0).cdf).pvalue > 0.01
    s.sum().backward()
    assert torch.isfinite(w.log_alpha.grad).all() and w.log_alpha.grad.abs().sum() > 0


def test_samples_are_clamped_away_from_zero_and_one():
    w = bw.BetaWeights(1000, init_alpha=0.01, init_beta=0.01)
    torch.manual_seed(0)
    s = w.sample(torch.arange(1000))
    assert (s >= w.sample_eps).all() and (s <= 1 - w.sample_eps).all()


def test_kl_regulariser():
    w = _weights(A, B)
    off = w.regulariser(torch.arange(5))
    assert float(off) == 0.0
    w = bw.BetaWeights(5, prior=(2.0, 2.0), kl_weight=0.3).double()
    with torch.no_grad():
        w.log_alpha.copy_(torch.log(torch.tensor(A, dtype=torch.float64)))
    idx = torch.tensor([0, 2])
    expected = 0.3 * kl_divergence(Beta(torch.tensor([A[0], A[2]], dtype=torch.float64),
                                        torch.ones(2, dtype=torch.float64)),
                                   Beta(torch.full((2,), 2.0, dtype=torch.float64),
                                        torch.full((2,), 2.0, dtype=torch.float64))).mean()
    torch.testing.assert_close(w.regulariser(idx), expected)
    assert w.regulariser(idx).requires_grad


def test_projection_clamps_any_value():
    w = bw.BetaWeights(3)
    with torch.no_grad():
        w.log_alpha.copy_(torch.tensor([1e9, -1e9, float("nan")]))
    w.project_()
    a, _ = w.concentrations()
    torch.testing.assert_close(a, torch.tensor([1e3, 1e-2, 1.0]))


@pytest.mark.parametrize("kwargs,match", [
    ({"init_alpha": 0.0}, "init_alpha"),
    ({"kl_weight": 1.0}, "needs a prior"),
    ({"prior": (1.0, -1.0)}, "two positive"),
    ({"min_concentration": 5.0, "max_concentration": 1.0}, "min_concentration"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bw.BetaWeights(4, **kwargs)


def test_bad_indices():
    w = bw.BetaWeights(4)
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        w.sample(torch.tensor([4]))
    with pytest.raises(ValueError, match="1-D integer"):
        w.sample(torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="positive integer"):
        bw.BetaWeights(0)


def test_state_dict_round_trip():
    w = _weights(A, B)
    w2 = bw.BetaWeights(5).double()
    w2.load_state_dict(w.state_dict())
    torch.testing.assert_close(w2.mean(), w.mean())
