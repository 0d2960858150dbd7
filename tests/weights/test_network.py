"""WeightNet: a Meta-Weight-Net-style MLP from the instance's loss to its weight."""

from __future__ import annotations

import pytest
import torch
from helpers import one_thread  # noqa: F401 (a fixture)

import betaweighter as bw

pytestmark = pytest.mark.usefixtures("one_thread")


def test_starts_at_one_half_for_every_loss_and_stays_in_the_unit_interval():
    # a sigmoid: in (0, 1), rounding to 0 or 1 only where it saturates
    w = bw.WeightNet(6)
    torch.testing.assert_close(w.weight_of(torch.tensor([0.0, 1.0, 50.0])), torch.full((3,), 0.5))
    torch.manual_seed(0)
    for p in w.net.parameters():
        torch.nn.init.normal_(p, std=3.0)
    out = w.weight_of(torch.linspace(0, 10, 50))
    assert torch.isfinite(out).all() and ((out >= 0) & (out <= 1)).all()
    assert ((out > 0) & (out < 1)).any()


def test_weights_depend_on_the_loss_not_the_index_and_are_differentiable():
    torch.manual_seed(0)
    w = bw.WeightNet(6, hidden=8)
    torch.nn.init.normal_(w.net[2].weight)
    s = w.sample(torch.tensor([0, 3, 5]), losses=torch.tensor([0.2, 1.5, 0.2]))
    assert s[0] == s[2] and s[0] != s[1]
    torch.testing.assert_close(s, w.weight_of(torch.tensor([0.2, 1.5, 0.2])))
    s.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in w.net.parameters())
    # an instance never seen: the network still gives it a weight from its loss
    torch.testing.assert_close(w.weight_of(torch.tensor([1.5])), s[1:2])


def test_mean_uses_each_instances_last_loss_and_imputes_the_unseen():
    torch.manual_seed(0)
    w = bw.WeightNet(4, hidden=8)
    torch.nn.init.normal_(w.net[2].weight)
    w.observe(torch.tensor([0, 1]), torch.tensor([0.5, 2.0]))
    w.observe(torch.tensor([0]), torch.tensor([1.0]))
    expected = w.weight_of(torch.tensor([1.0, 2.0, 1.5, 1.5])).detach()  # unseen: mean loss
    torch.testing.assert_close(w.mean(), expected)
    torch.testing.assert_close(w.sample(torch.tensor([1, 2])).detach(), expected[1:3])
    before = w.mean()
    w.sample(torch.tensor([1]), losses=torch.tensor([9.0]))  # sampling records nothing
    torch.testing.assert_close(w.mean(), before)
    torch.testing.assert_close(w.std(), torch.zeros(4))
    torch.testing.assert_close(w.cdf(float(expected[0])), (expected <= expected[0]).float())


def test_features_are_an_extra_input():
    feats = torch.tensor([[0.0], [1.0], [0.0]])
    w = bw.WeightNet(3, hidden=4, features=feats)
    torch.nn.init.normal_(w.net[2].weight)
    assert w.net[0].in_features == 2
    s = w.sample(torch.tensor([0, 1, 2]), losses=torch.ones(3))
    assert s[0] == s[2] and s[0] != s[1]
    with pytest.raises(ValueError, match="features"):
        w.weight_of(torch.ones(2))
    with pytest.raises(ValueError, match=r"\(3, F\)"):
        bw.WeightNet(3, features=torch.ones(4, 2))
    assert "features" not in w.state_dict()  # an input, not a learnt state


def test_projection_keeps_parameters_finite_and_bounded():
    w = bw.WeightNet(3, hidden=4, max_abs=10.0)
    with torch.no_grad():
        w.net[0].weight.fill_(float("nan"))
        w.net[2].weight.fill_(1e9)
    w.project_()
    assert all(torch.isfinite(p).all() for p in w.net.parameters())
    assert max(float(p.detach().abs().max()) for p in w.net.parameters()) <= 10.0


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="hidden"):
        bw.WeightNet(3, hidden=0)
    with pytest.raises(ValueError, match="3 indices"):
        bw.WeightNet(5).sample(torch.tensor([0, 1, 2]), losses=torch.ones(2))
