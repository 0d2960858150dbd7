"""One virtual step must equal one real step of torch.optim, for every supported option."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import images, tiny_convnet

from betaweighter.meta.virtual_step import VirtualOptimizer

SGD_OPTIONS = [
    {"lr": 0.1},
    {"lr": 0.1, "momentum": 0.9},
    {"lr": 0.1, "momentum": 0.9, "dampening": 0.3},
    {"lr": 0.1, "momentum": 0.9, "nesterov": True},
    {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2},
    {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
    {"lr": 0.1, "momentum": 0.5, "maximize": True},
]
ADAM_OPTIONS = [
    (torch.optim.Adam, {"lr": 1e-2}),
    (torch.optim.Adam, {"lr": 1e-2, "weight_decay": 1e-2}),
    (torch.optim.Adam, {"lr": 1e-2, "amsgrad": True}),
    (torch.optim.Adam, {"lr": 1e-2, "betas": (0.5, 0.9), "eps": 1e-6, "maximize": True}),
    (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}),
]
OTHER_OPTIONS = [
    (torch.optim.RMSprop, {"lr": 1e-3}),
    (torch.optim.RMSprop, {"lr": 1e-3, "alpha": 0.9, "weight_decay": 1e-2, "maximize": True}),
    (torch.optim.RMSprop, {"lr": 1e-3, "momentum": 0.9, "centered": True}),
    (torch.optim.Adagrad, {"lr": 1e-2}),
    (torch.optim.Adagrad, {"lr": 1e-2, "lr_decay": 0.1, "weight_decay": 1e-2,
                           "initial_accumulator_value": 0.1}),
]
CASES = [(torch.optim.SGD, o) for o in SGD_OPTIONS] + ADAM_OPTIONS + OTHER_OPTIONS


def _loss(model, seed):
    return model(images(4, seed=seed)).pow(2).mean()


@pytest.mark.parametrize("warm_steps", [0, 2])
@pytest.mark.parametrize("cls,options", CASES)
def test_virtual_step_equals_real_step(cls, options, warm_steps):
    model = tiny_convnet()
    opt = cls(model.parameters(), **options)
    for s in range(warm_steps):  # with existing momentum buffers / moments
        opt.zero_grad()
        _loss(model, s).backward()
        opt.step()
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(_loss(model, 99), list(params.values()))
    vopt = VirtualOptimizer(opt, params)
    new, _ = vopt.step(params, dict(zip(params, grads)), vopt.initial_state())

    real = copy.deepcopy(model)
    real_opt = cls(real.parameters(), **options)
    real_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for p, g in zip(real.parameters(), grads):
        p.grad = g.clone()
    state_before = copy.deepcopy(opt.state_dict())
    real_opt.step()
    for (name, p) in real.named_parameters():
        torch.testing.assert_close(new[name], p, rtol=1e-12, atol=1e-14)
    # the real optimiser's state was only read
    after = opt.state_dict()
    for k, v in state_before["state"].items():
        for key, t in v.items():
            torch.testing.assert_close(after["state"][k][key], t, rtol=0, atol=0)


def test_two_virtual_steps_follow_the_optimizer_state():
    model = tiny_convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    params = dict(model.named_parameters())
    vopt = VirtualOptimizer(opt, params)
    g = {n: torch.ones_like(p) for n, p in params.items()}
    p1, s1 = vopt.step(params, g, vopt.initial_state())
    p2, _ = vopt.step(p1, g, s1)
    name = next(iter(params))
    # buffer: 1, then 0.9 * 1 + 1 = 1.9; total change 0.1 * (1 + 1.9)
    torch.testing.assert_close(params[name] - p2[name], torch.full_like(p2[name], 0.29))


def test_param_groups_use_their_own_learning_rates():
    model = tiny_convnet()
    head = list(model.head.parameters())
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.SGD([{"params": body, "lr": 0.1}, {"params": head, "lr": 0.5}])
    params = dict(model.named_parameters())
    vopt = VirtualOptimizer(opt, params)
    g = {n: torch.ones_like(p) for n, p in params.items()}
    new, _ = vopt.step(params, g, vopt.initial_state())
    torch.testing.assert_close(params["head.bias"] - new["head.bias"],
                               torch.full_like(new["head.bias"], 0.5))
    name = next(n for n in params if not n.startswith("head"))
    torch.testing.assert_close(params[name] - new[name], torch.full_like(new[name], 0.1))


def test_unsupported_optimizer_is_named():
    model = tiny_convnet()
    with pytest.raises(TypeError, match=r"can reproduce torch.optim.SGD.*got torch.optim.*Rprop"):
        VirtualOptimizer(torch.optim.Rprop(model.parameters()), dict(model.named_parameters()))


def test_optimizer_over_foreign_parameters_is_rejected():
    model = tiny_convnet()
    other = torch.nn.Linear(2, 2).double()
    opt = torch.optim.SGD(list(model.parameters()) + list(other.parameters()), lr=0.1)
    with pytest.raises(ValueError, match="not a parameter of the model"):
        VirtualOptimizer(opt, dict(model.named_parameters()))


def test_the_step_reads_the_optimizers_current_groups_after_load_state_dict():
    """torch's load_state_dict replaces the param-group dicts (a resumed run): the virtual
    step must follow the live ones, not keep the old."""
    model = tiny_convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    params = dict(model.named_parameters())
    vopt = VirtualOptimizer(opt, params)
    saved = copy.deepcopy(opt.state_dict())
    saved["param_groups"][0]["lr"] = 0.02
    opt.load_state_dict(saved)
    g = {n: torch.ones_like(p) for n, p in params.items()}
    new, _ = vopt.step(params, g, vopt.initial_state())
    name = next(iter(params))
    torch.testing.assert_close(params[name] - new[name], torch.full_like(new[name], 0.02))


@pytest.mark.parametrize("kwargs", [
    {"lr": 0.1}, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
    {"lr": 0.1, "momentum": 0.9, "nesterov": True},
    {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "maximize": True}])
@pytest.mark.parametrize("with_buffer", [False, True])
def test_sgd_linear_tangent_equals_forward_mode_through_the_step(kwargs, with_buffer):
    """The SGD fast path (J a scalar per parameter) against dual tensors through the
    differentiable step."""
    from torch.autograd import forward_ad as fwAD

    from betaweighter.meta.virtual_step import VirtualOptimizer

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    opt = torch.optim.SGD(model.parameters(), **kwargs)
    if with_buffer:
        model(torch.randn(4, 3, dtype=torch.float64)).sum().backward()
        opt.step()
        opt.zero_grad()
    vopt = VirtualOptimizer(opt, dict(model.named_parameters()))
    theta = {n: p.detach() for n, p in model.named_parameters()}
    grads = {n: torch.randn_like(p) for n, p in theta.items()}
    v = {n: torch.randn_like(p) for n, p in theta.items()}
    state = vopt.initial_state()
    fast = vopt.linear_tangent(state, v)
    with fwAD.dual_level():
        out, _ = vopt.step(theta, {n: fwAD.make_dual(grads[n], v[n]) for n in v}, state)
        slow = {n: fwAD.unpack_dual(out[n]).tangent for n in v}
    for n in v:
        torch.testing.assert_close(fast[n], slow[n], rtol=1e-12, atol=1e-15)
    assert VirtualOptimizer(torch.optim.Adam(model.parameters()),
                            dict(model.named_parameters())).linear_tangent(state, v) is None
