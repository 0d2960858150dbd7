"""L2RW (Ren et al., ICML 2018) against its definition, computed independently."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import images, one_thread, tiny_convnet  # noqa: F401 (a fixture)

import betaweighter as bw

pytestmark = pytest.mark.usefixtures("one_thread")


def test_weights_are_the_normalised_positive_part_of_the_negative_meta_gradient():
    w = bw.L2RW(10)
    out = w.weights(torch.tensor([1, 2, 3, 4]), meta_grad=torch.tensor([-1.0, 2.0, -3.0, 0.0]))
    # max(-g, 0) = [1, 0, 3, 0], normalised to sum 1, scaled to sum 4 (the batch size)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0, 3.0, 0.0]))
    torch.testing.assert_close(w.weights(torch.tensor([5, 6]), meta_grad=torch.tensor([0.5, 0.0])),
                               torch.ones(2))  # nothing helps: uniform
    huge = torch.tensor([-1e38, -3e38, 1.0])  # whose sum overflows float32
    torch.testing.assert_close(w.weights(torch.tensor([7, 8, 9]), meta_grad=huge),
                               torch.tensor([0.75, 2.25, 0.0]))
    with pytest.raises(ValueError, match="non-finite"):
        w.weights(torch.tensor([0, 1]), meta_grad=torch.tensor([float("nan"), -1.0]))
    with pytest.raises(ValueError, match="needs the batch's meta-gradient"):
        w.weights(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="3 entries for 2 indices"):
        w.weights(torch.tensor([0, 1]), meta_grad=torch.zeros(3))


def test_mean_is_a_bias_corrected_average_of_the_weights_given():
    w = bw.L2RW(4, smoothing=0.5)
    torch.testing.assert_close(w.mean(), torch.ones(4))  # unvisited: the uniform weight
    for g in ([-1.0, -3.0], [-1.0, -1.0]):
        w.weights(torch.tensor([0, 2]), meta_grad=torch.tensor(g))
    # instance 0 got 0.5 then 1.0; the corrected average is (0.25 * 0.5 + 0.5 * 1) / 0.75
    torch.testing.assert_close(w.mean(torch.tensor([0, 2, 1])),
                               torch.tensor([0.625 / 0.75, 0.875 / 0.75, 1.0]))
    torch.testing.assert_close(w.std(), torch.zeros(4))


def _setup(seed=3):
    model = tiny_convnet(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-3)
    tx, ty = bw.rotate4(images(6, seed=7))  # target: the same task, clean labels
    x, y = bw.rotate4(images(6, seed=8))
    y = y.view(6, 4)
    y[1::2] = (y[1::2] + 2) % 4  # every other training instance has wrong labels
    y = y.flatten()
    # one ordinary step first, so that the momentum buffers exist and matter
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()
    return model, opt, (x, y), (tx, ty)


def _meta_after_real_step(model, opt, x, y, eps, tx, ty):
    """M(theta') after a real torch.optim step on sum_rows eps_row * l_row / n."""
    m = copy.deepcopy(model)
    o = torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-3)
    o.load_state_dict(copy.deepcopy(opt.state_dict()))
    (eps.repeat_interleave(4) * F.cross_entropy(m(x), y, reduction="none")).mean().backward()
    o.step()
    return float(F.cross_entropy(m(tx), ty).detach())


@pytest.mark.parametrize("meta_gradient", ["forward", "double_backward", "higher"])
def test_real_step_uses_l2rw_weights_from_finite_differences(meta_gradient):
    model, opt, (x, y), (tx, ty) = _setup()
    reference = copy.deepcopy(model)
    b = 6
    # g_i = dM/d eps_i at eps = 0, by central differences over real optimiser steps
    h = 1e-5
    g = torch.empty(b, dtype=torch.float64)
    for i in range(b):
        e = torch.zeros(b, dtype=torch.float64)
        e[i] = h
        g[i] = (_meta_after_real_step(model, opt, x, y, e, tx, ty)
                - _meta_after_real_step(model, opt, x, y, -e, tx, ty)) / (2 * h)
    assert (g > 0).any() and (g < 0).any(), g  # the clamp at zero is exercised
    expected = g.neg().clamp_min(0)
    expected = expected / expected.sum() * b

    weights = bw.L2RW(20).double()
    meta = bw.MetaWeighter(model, weights, opt, lambda m: F.cross_entropy(m(tx), ty),
                           meta_gradient=meta_gradient)
    idx = torch.tensor([4, 0, 9, 13, 2, 17])
    loss = meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"), idx)
    # first visit: the reported mean is the weight given
    torch.testing.assert_close(weights.mean(idx), expected, rtol=1e-6, atol=1e-8)

    # the model's gradient is that of L2RW's weighted average, sum_i w~_i l_i, sum w~ = 1
    rows = F.cross_entropy(reference(x), y, reduction="none").view(b, 4).mean(1)
    ((expected / b) * rows).sum().backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(loss, ((expected / b) * rows).sum().detach())


def test_l2rw_changes_the_model():
    # The reference code computed L2RW's weights but never stepped the model with them.
    model, opt, (x, y), (tx, ty) = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    meta = bw.MetaWeighter(model, bw.L2RW(6).double(), opt,
                           lambda m: F.cross_entropy(m(tx), ty))

    def train_loss():
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    start = train_loss()
    for _ in range(5):
        meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"), torch.arange(6))
        assert sum(float(p.grad.norm()) for p in model.parameters()) > 1e-3
        opt.step()
        opt.zero_grad()
    moved = sum(float((p.detach() - q).norm()) for p, q in zip(model.parameters(), before))
    assert moved > 1e-2
    assert train_loss() < start


def _l2rw_step(**meta_kwargs):
    """A fresh setup and a function doing one MetaWeighter step with L2RW on it."""
    model, opt, (x, y), (tx, ty) = _setup()
    weights = bw.L2RW(6).double()
    meta = bw.MetaWeighter(model, weights, opt, lambda m: F.cross_entropy(m(tx), ty),
                           **meta_kwargs)

    def step():
        meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"), torch.arange(6))
        return weights.mean()

    return step


def test_every_call_must_be_a_meta_step():
    with pytest.raises(ValueError, match="needs every=1"):  # refused before any training
        _l2rw_step(every=2)


def test_normalised_loss_is_refused_before_training():
    assert (_l2rw_step(meta_gradient="forward")() == 0).any()
    with pytest.raises(ValueError, match="normalise=False"):  # 0 / 0 at w = 0
        _l2rw_step(normalise=True)


def test_bad_smoothing():
    with pytest.raises(ValueError, match="smoothing"):
        bw.L2RW(3, smoothing=1.0)
