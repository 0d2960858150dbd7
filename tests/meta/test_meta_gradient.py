"""The meta-gradient against finite differences and across engines, in float64."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import images, labelled, tiny_convnet
from scipy.special import betainc, betaincinv

import betaweighter as bw

N, B = 12, 3


def _objective(target):
    """A fixed (deterministic) target objective, so finite differences see one function."""
    x, y = target.tensors

    def objective(model):
        return F.cross_entropy(model(x), y)

    return objective


def _make_optimizer(model, kind):
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    if kind == "sgd_nesterov":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                               weight_decay=1e-3)
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    raise ValueError(kind)


def _setup(kind):
    model = tiny_convnet()
    opt = _make_optimizer(model, kind)
    pool = images(N, seed=3)
    target = labelled(16, 4, seed=4)
    # A few real steps so that momentum buffers / Adam moments exist.
    for s in range(3):
        x, y = bw.rotate4(pool[s * B:(s + 1) * B])
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return model, opt, pool, target


def _lookahead_meta_loss(model, opt, x, y, w_rows, objective, inner_steps=1):
    """Meta loss after real optimiser step(s) on copies: an independent reference."""
    m = copy.deepcopy(model)
    o = type(opt)(m.parameters(), **opt.defaults)
    o.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict would share buffers
    for _ in range(inner_steps):
        o.zero_grad()
        (w_rows * F.cross_entropy(m(x), y, reduction="none")).mean().backward()
        o.step()
    return float(objective(m).detach())


@pytest.mark.parametrize(
    "kind,meta_gradient,inner_steps",
    [("sgd", "forward", 1), ("sgd", "double_backward", 1), ("sgd_nesterov", "auto", 1),
     ("adam", "double_backward", 1), ("sgd", "double_backward", 2)],
)
def test_beta_meta_gradient_matches_finite_differences(kind, meta_gradient, inner_steps):
    model, opt, pool, target = _setup(kind)
    objective = _objective(target)
    weights = bw.BetaWeights(N).double()
    with torch.no_grad():  # distinct concentrations per instance
        weights.log_alpha.copy_(torch.linspace(-0.5, 0.7, N, dtype=torch.float64))
        weights.log_beta.copy_(torch.linspace(0.4, -0.3, N, dtype=torch.float64))
    meta = bw.MetaWeighter(model, weights, opt, objective, weight_lr=1.0, weight_momentum=0.0,
                           meta_gradient=meta_gradient, inner_steps=inner_steps)
    idx = torch.tensor([1, 5, 8])
    x, y = bw.rotate4(pool[idx])
    before_a = weights.log_alpha.detach().clone()
    before_b = weights.log_beta.detach().clone()
    torch.manual_seed(123)
    w0 = weights.sample(idx).detach().numpy()
    torch.manual_seed(123)
    meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"), idx)
    # Plain SGD with lr 1 and no momentum: the parameter change is minus the gradient.
    grad_a = (before_a - weights.log_alpha.detach())[idx].numpy()
    grad_b = (before_b - weights.log_beta.detach())[idx].numpy()

    # Finite differences with the sampling noise fixed: the CDF level u of each sample is
    # held constant and w = F^-1(u; alpha, beta), which is what the implicit
    # reparameterisation gradient of torch's Beta.rsample differentiates.
    la, lb = before_a[idx].numpy(), before_b[idx].numpy()
    u = betainc(np.exp(la), np.exp(lb), w0)

    def meta_loss(la_, lb_):
        w = torch.as_tensor(betaincinv(np.exp(la_), np.exp(lb_), u))
        return _lookahead_meta_loss(model, opt, x, y, w.repeat_interleave(4), objective,
                                    inner_steps)

    h = 1e-5
    fd_a, fd_b = np.zeros(B), np.zeros(B)
    for i in range(B):
        e = np.zeros(B)
        e[i] = h
        fd_a[i] = (meta_loss(la + e, lb) - meta_loss(la - e, lb)) / (2 * h)
        fd_b[i] = (meta_loss(la, lb + e) - meta_loss(la, lb - e)) / (2 * h)
    got, want = np.concatenate([grad_a, grad_b]), np.concatenate([fd_a, fd_b])
    assert np.abs(want).max() > 1e-6, "degenerate test: the meta-gradient is ~0"
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel <= 1e-4, (got, want, rel)


def _one_meta_step(engine, meta_gradient, normalise=False, kind="sgd", weights_cls=None):
    model, opt, pool, target = _setup(kind)
    weights = (weights_cls or bw.BetaWeights)(N).double()
    meta = bw.MetaWeighter(model, weights, opt, _objective(target), weight_lr=1.0,
                           weight_momentum=0.0, engine=engine, meta_gradient=meta_gradient,
                           normalise=normalise)
    before = [p.detach().clone() for p in weights.parameters()]
    idx = torch.tensor([0, 4, 9])
    x, y = bw.rotate4(pool[idx])
    torch.manual_seed(7)
    meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"), idx)
    return torch.cat([(b - p.detach()) for b, p in zip(before, weights.parameters())])


@pytest.mark.parametrize("normalise", [False, True])
@pytest.mark.parametrize("weights_cls", [bw.BetaWeights, bw.PointWeights])
def test_engines_agree(normalise, weights_cls):
    ref = _one_meta_step("func", "double_backward", normalise, weights_cls=weights_cls)
    fast = _one_meta_step("func", "forward", normalise, weights_cls=weights_cls)
    via_higher = _one_meta_step("higher", "auto", normalise, weights_cls=weights_cls)
    differences = _one_meta_step("func", "finite_difference", normalise, weights_cls=weights_cls)
    assert ref.abs().max() > 1e-8
    scale = ref.abs().max()
    assert (fast - ref).abs().max() / scale <= 1e-6
    assert (via_higher - ref).abs().max() / scale <= 1e-6
    assert (differences - ref).abs().max() / scale <= 1e-6  # float64: h ~ 6e-6


def test_forward_mode_refuses_inexact_settings():
    model, opt, pool, target = _setup("adam")
    with pytest.raises(ValueError, match="needs an SGD optimiser"):
        meta = bw.MetaWeighter(model, bw.BetaWeights(N).double(), opt, _objective(target),
                               meta_gradient="forward")
        x, y = bw.rotate4(pool[:2])
        meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"), [0, 1])


def test_higher_engine_rejects_adamw():
    model = tiny_convnet()
    opt = torch.optim.AdamW(model.parameters())
    meta = bw.MetaWeighter(model, bw.BetaWeights(N).double(), opt, _objective(labelled(8, 4)),
                           engine="higher")
    x, y = bw.rotate4(images(2))
    with pytest.raises(TypeError, match="AdamW"):
        meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"), [0, 1])


def test_finite_difference_is_close_in_float32():
    model, opt, pool, target = _setup("sgd")
    results = {}
    for method in ("double_backward", "finite_difference"):
        m = copy.deepcopy(model).float()
        o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        weights = bw.BetaWeights(N)
        tx, ty = target.tensors[0].float(), target.tensors[1]

        def objective(look, tx=tx, ty=ty):
            return F.cross_entropy(look(tx), ty)

        meta = bw.MetaWeighter(m, weights, o, objective, weight_lr=1.0, weight_momentum=0.0,
                               meta_gradient=method)
        idx = torch.tensor([0, 4, 9])
        xr, yr = bw.rotate4(pool[idx].float())
        torch.manual_seed(7)
        meta.backward(xr, lambda out, yr=yr: F.cross_entropy(out, yr, reduction="none"), idx)
        results[method] = -weights.log_alpha.detach()[idx]
    ref = results["double_backward"]
    assert ref.abs().max() > 1e-6
    assert (results["finite_difference"] - ref).abs().max() / ref.abs().max() < 2e-3
