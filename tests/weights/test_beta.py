"""BetaWeights against the Beta distribution's definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

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


def test_samples_are_clamped_away_from_zero_and_one_with_the_gradient_kept():
    w = bw.BetaWeights(1000, init_alpha=0.01, init_beta=0.01)
    torch.manual_seed(0)
    s = w.sample(torch.arange(1000))
    assert (s >= w.sample_eps).all() and (s <= 1 - w.sample_eps).all()
    clamped = (s.detach() == w.sample_eps) | (s.detach() == 1 - w.sample_eps)
    assert clamped.sum() > 100
    s.sum().backward()  # the clamp passes the reparameterisation gradient straight through
    assert torch.isfinite(w.log_alpha.grad).all() and (w.log_alpha.grad[clamped] != 0).any()


def _kl_beta(a1, b1, a2, b2):
    """KL(Beta(a1, b1) || Beta(a2, b2)) in closed form (scipy's special functions)."""
    from scipy.special import betaln, digamma

    return (betaln(a2, b2) - betaln(a1, b1) + (a1 - a2) * digamma(a1)
            + (b1 - b2) * digamma(b1) + (a2 - a1 + b2 - b1) * digamma(a1 + b1))


def test_kl_regulariser_is_the_weighted_mean_kl_to_the_prior():
    assert float(_weights(A, B).regulariser(torch.arange(5))) == 0.0
    w = bw.BetaWeights(5, prior=(2.0, 2.0), kl_weight=0.3).double()
    with torch.no_grad():
        w.log_alpha.copy_(torch.log(torch.tensor(A, dtype=torch.float64)))
    idx = torch.tensor([0, 2])
    expected = 0.3 * np.mean([_kl_beta(A[0], 1.0, 2.0, 2.0), _kl_beta(A[2], 1.0, 2.0, 2.0)])
    reg = w.regulariser(idx)
    assert float(reg.detach()) == pytest.approx(expected, rel=1e-10) and reg.requires_grad


def test_cdf_outside_the_unit_interval_is_zero_or_one():
    w = _weights(A, B)
    assert w.cdf(-0.5).tolist() == [0.0] * 5 and w.cdf(1.5).tolist() == [1.0] * 5


@pytest.mark.parametrize("bound", ["max", "min"])
def test_an_instance_pushed_onto_the_bound_comes_back(bound):
    """The projection keeps the bound's gradient alive (a clamp in the forward would pass
    none there, so the instance would stay stuck forever)."""
    w = bw.BetaWeights(2, estimator="mean")  # gradients of the mean: no sampling noise
    opt = bw.WeightOptimizer("sgd", lr=1.0, normalise=False).bind(w)
    idx = torch.tensor([0])
    sign = 1.0 if bound == "max" else -1.0  # push alpha up (weight up) or down
    with torch.no_grad():
        w.log_alpha[0] = sign * 1e9
    w.project_()
    edge = float(w.concentrations()[0][0].detach())
    assert edge == pytest.approx(1e3 if bound == "max" else 1e-2, rel=1e-5)
    for _ in range(3):  # pushed further: stays on the bound, finite
        torch.manual_seed(0)
        (-sign * w.sample(idx)).sum().backward()
        opt.step(idx)
    assert float(w.concentrations()[0][0].detach()) == pytest.approx(edge, rel=1e-5)
    for _ in range(3):  # the signal reverses: it leaves the bound
        torch.manual_seed(0)
        (sign * w.sample(idx)).sum().backward()
        assert w.log_alpha.grad[0] != 0
        opt.step(idx)
    moved = float(w.concentrations()[0][0].detach())
    assert (moved < edge * 0.999) if bound == "max" else (moved > edge * 1.001)


def test_mean_estimator_keeps_the_sample_value_and_differentiates_the_mean():
    w = bw.BetaWeights(3, estimator="mean").double()
    with torch.no_grad():
        w.log_alpha.copy_(torch.log(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)))
    torch.manual_seed(0)
    s = w.sample(torch.arange(3))
    torch.manual_seed(0)
    plain = torch.distributions.Beta(*w.concentrations()).sample().clamp(1e-6, 1 - 1e-6)
    torch.testing.assert_close(s.detach(), plain)
    s.sum().backward()
    a, b = w.concentrations()
    expected = (a * b / (a + b) ** 2).detach()  # d mean / d log alpha
    torch.testing.assert_close(w.log_alpha.grad, expected)
    torch.testing.assert_close(w.log_beta.grad, -expected)


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
    ({"estimator": "score"}, "estimator"),
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
    torch.testing.assert_close(w2.std(), w.std())
    assert not torch.allclose(bw.BetaWeights(5).double().mean(), w.mean())
