"""PointWeights (DW) and UniformWeights (RotNet) through the shared interface."""

from __future__ import annotations

import pytest
import torch

import betaweighter as bw


def test_point_weights_are_their_value_and_stay_in_unit_interval():
    w = bw.PointWeights(4, init=0.25)
    s = w.sample(torch.tensor([0, 2]))
    torch.testing.assert_close(s, torch.tensor([0.25, 0.25]))
    assert s.requires_grad
    with torch.no_grad():
        w.value.copy_(torch.tensor([-3.0, 0.4, 7.0, float("nan")]))
    w.project_()
    torch.testing.assert_close(w.mean(), torch.tensor([0.0, 0.4, 1.0, 0.5]))
    torch.testing.assert_close(w.std(), torch.zeros(4))


def test_point_weight_cdf_is_a_step():
    w = bw.PointWeights(3)
    with torch.no_grad():
        w.value.copy_(torch.tensor([0.05, 0.1, 0.7]))
    torch.testing.assert_close(w.cdf(0.1), torch.tensor([1.0, 1.0, 0.0]))


def test_point_weights_reject_bad_init():
    with pytest.raises(ValueError, match="init"):
        bw.PointWeights(3, init=1.5)


def test_uniform_weights_are_a_rule_of_ones():
    w = bw.UniformWeights(5)
    assert isinstance(w, bw.WeightRule) and len(list(w.parameters())) == 0
    torch.testing.assert_close(w.weights(torch.tensor([1, 4])), torch.ones(2))
    torch.testing.assert_close(w.mean(), torch.ones(5))
    torch.testing.assert_close(w.cdf(0.5), torch.zeros(5))
