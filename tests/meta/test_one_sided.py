"""meta_gradient="one_sided": one extra forward against the training losses, close to the
exact forward-mode meta-gradient, with the running direction too; refused in low
precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import images, labelled, tiny_convnet
from torch import nn

import betaweighter as bw

N = 16


def _raw():
    return bw.WeightOptimizer("sgd", lr=1.0, normalise=False)


def _step(method, dtype=torch.float64, direction="fresh", dropout=False, calls=1):
    torch.manual_seed(0)
    model = tiny_convnet(dtype=dtype)
    if dropout:
        model = nn.Sequential(model, nn.Dropout(0.3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pool = images(N, seed=3, dtype=dtype)
    tx, ty = labelled(16, 4, seed=4, dtype=dtype).tensors

    def objective(m):
        return F.cross_entropy(m(tx), ty)

    weights = bw.PointWeights(N).to(dtype)
    meta = bw.MetaWeighter(model, weights, opt, objective, weight_optimizer=_raw(),
                           meta_gradient=method, direction=direction)
    before = weights.value.detach().clone()
    for c in range(calls):
        idx = torch.arange(4 * c, 4 * c + 4)
        x, y = bw.rotate4(pool[idx])
        torch.manual_seed(10 + c)
        meta.backward(x, lambda out, y=y: F.cross_entropy(out, y, reduction="none"), idx)
        opt.step()
        opt.zero_grad()
    return before - weights.value.detach()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-4), (torch.float32, 5e-2)])
def test_one_sided_is_close_to_forward_mode(dtype, tol):
    exact, approx = _step("forward", dtype), _step("one_sided", dtype)
    assert exact.abs().max() > 0
    rel = float((approx - exact).norm() / exact.norm())
    assert rel < tol, rel


def test_one_sided_with_the_running_direction_and_dropout():
    exact = _step("forward", direction="running", dropout=True, calls=3)
    approx = _step("one_sided", direction="running", dropout=True, calls=3)
    assert float((approx - exact).norm() / exact.norm()) < 1e-4


def test_one_sided_is_refused_in_low_precision():
    model = tiny_convnet(dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="precision='fp32'"):
        bw.MetaWeighter(model, bw.PointWeights(4), opt, lambda m: m.weight.sum(),
                        meta_gradient="one_sided", precision="bf16")


def test_one_sided_refuses_an_unreproducible_forward():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_convnet()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.net(x) * self.calls  # different at every call

    model = Noisy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tx, ty = labelled(8, 4, seed=4).tensors
    meta = bw.MetaWeighter(model, bw.PointWeights(N).double(), opt,
                           lambda m: F.cross_entropy(m(tx), ty), meta_gradient="one_sided")
    x, y = bw.rotate4(images(2, seed=1))
    with pytest.raises(RuntimeError, match="not reproducible"):
        meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"),
                      torch.tensor([0, 1]))
