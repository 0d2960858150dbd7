"""The two-view pretexts under MetaWeighter, in float64 on a tiny net: the forward-mode
meta-gradient equals the double backward (the batch-coupled NT-Xent and SwAV cases
included; SwAV's codes are constants of the step, its queue in use) and a
finite difference of real optimiser steps; the look-ahead never touches a target network;
bad input gets one clear error each."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import images, labelled, tiny_convnet

import betaweighter as bw
from betaweighter.errors import LossShapeError, SharedParametersError
from betaweighter.meta.lookahead import LookaheadModel
from betaweighter.pretext import (
    BYOLPretext,
    MoCoPretext,
    MomentumTarget,
    SimCLRPretext,
    SimSiamPretext,
    SwAVPretext,
)

N, B = 10, 3
PRETEXTS = {
    "simclr": (SimCLRPretext, {"temperature": 0.5}),
    "moco": (MoCoPretext, {"queue_size": 16, "momentum": 0.9}),
    "byol": (BYOLPretext, {"momentum": 0.9}),
    "simsiam": (SimSiamPretext, {"predictor_hidden_dim": 4}),
    "swav": (SwAVPretext, {"prototypes": 5, "queue_size": 4}),
}
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}),
    "adam": (torch.optim.Adam, {"lr": 1e-2, "weight_decay": 1e-3}),
}


def _pretext(name):
    cls, kw = PRETEXTS[name]
    torch.manual_seed(0)
    return cls(tiny_convnet(), hidden_dim=8, projection_dim=6, **kw).double()


def _objective():
    """A fixed target objective on the backbone's features (deterministic: one function
    for finite differences)."""
    x, y = labelled(12, 3, seed=4).tensors
    head = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def objective(model):
        return F.cross_entropy(model.features(x) @ head, y)

    return objective


def _view_pairs():
    """N pool instances, two (fixed) views each: (N, 2, C, H, W)."""
    return images(2 * N, seed=3).view(N, 2, 3, 8, 8)


def _setup(name, kind="sgd"):
    pretext = _pretext(name)
    cls, kwargs = OPTIMIZERS[kind]
    opt = cls([p for p in pretext.parameters() if p.requires_grad], **kwargs)
    pairs = _view_pairs()
    for s in range(2):  # real steps: momentum buffers, Adam moments, a moved target, a queue
        b = pretext.batch(pairs[s * B:(s + 1) * B])
        b.loss_fn(pretext(b.inputs)).mean().backward()
        opt.step()
        opt.zero_grad()
        pretext.after_step()
    return pretext, opt, pairs


def _raw():
    return bw.WeightOptimizer("sgd", lr=1.0, normalise=False)


def _meta_step(name, meta_gradient, kind="sgd"):
    """The change of the weight parameters after one MetaWeighter call (raw SGD, lr 1:
    minus the meta-gradient)."""
    pretext, opt, pairs = _setup(name, kind)
    weights = bw.BetaWeights(N).double()
    with torch.no_grad():
        weights.log_alpha.copy_(torch.linspace(-0.5, 0.7, N, dtype=torch.float64))
    meta = bw.MetaWeighter(pretext, weights, opt, _objective(), weight_optimizer=_raw(),
                           meta_gradient=meta_gradient)
    idx = torch.tensor([0, 4, 9])
    b = pretext.batch(pairs[idx])
    before = [p.detach().clone() for p in weights.parameters()]
    torch.manual_seed(7)
    meta.backward(b.inputs, b.loss_fn, idx, copies=b.copies)
    return torch.cat([(p0 - p.detach())[idx] for p0, p in zip(before, weights.parameters())])


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
@pytest.mark.parametrize("name", sorted(PRETEXTS))
def test_forward_mode_equals_double_backward(name, kind):
    ref = _meta_step(name, "double_backward", kind)
    fast = _meta_step(name, "forward", kind)
    assert ref.abs().max() > 1e-8, "degenerate test: the meta-gradient is ~0"
    assert (fast - ref).abs().max() / ref.abs().max() <= 1e-9
    if kind == "sgd":  # the targets are constants of the loss, so differences see them too
        fd = _meta_step(name, "finite_difference", kind)
        assert (fd - ref).abs().max() / ref.abs().max() <= 1e-6


@pytest.mark.parametrize("name", sorted(PRETEXTS))
def test_batch_leaves_the_online_networks_buffers_alone(name):
    pretext, _, pairs = _setup(name)
    before = {k: v.clone() for k, v in pretext.named_buffers() if not k.startswith("target.")}
    pretext.batch(pairs[:3])
    for k, v in pretext.named_buffers():
        if k in before:
            assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_meta_gradient_matches_finite_differences_of_real_steps(name):
    """dM/dw_i against (M(w + h e_i) - M(w - h e_i)) / 2h, where M is the objective after a
    real SGD step of a copy of the pretext on the weighted per-view losses."""
    pretext, opt, pairs = _setup(name)
    objective = _objective()
    weights = bw.PointWeights(N).double()
    meta = bw.MetaWeighter(pretext, weights, opt, objective, weight_optimizer=_raw(),
                           meta_gradient="forward")
    idx = torch.tensor([1, 5, 8])
    b = pretext.batch(pairs[idx])
    w0 = weights.value.detach()[idx].clone()
    meta.backward(b.inputs, b.loss_fn, idx, copies=b.copies)
    got = (w0 - weights.value.detach()[idx]).numpy()

    def meta_loss(w):
        m = copy.deepcopy(pretext)
        o = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], **OPTIMIZERS["sgd"][1])
        o.load_state_dict(copy.deepcopy(opt.state_dict()))
        o.zero_grad()
        (w.repeat_interleave(2) * b.loss_fn(m(b.inputs))).mean().backward()
        o.step()
        with torch.no_grad():
            return float(objective(LookaheadModel(m, dict(m.named_parameters()))))

    h, want = 1e-5, []
    for i in range(B):
        e = torch.zeros(B, dtype=torch.float64)
        e[i] = h
        want.append((meta_loss(w0 + e) - meta_loss(w0 - e)) / (2 * h))
    want = torch.tensor(want).numpy()
    assert abs(want).max() > 1e-6
    assert abs(got - want).max() / abs(want).max() <= 1e-5, (got, want)


def _target_state(pretext):
    return {k: v.clone() for k, v in pretext.target.state_dict().items()}


@pytest.mark.parametrize("meta_gradient", ["forward", "double_backward", "finite_difference"])
@pytest.mark.parametrize("name", ["moco", "byol"])
def test_the_lookahead_leaves_the_target_network_untouched(name, meta_gradient):
    pretext, opt, pairs = _setup(name)
    # even an optimiser handed every parameter (target included) must not step the target
    opt = torch.optim.SGD(pretext.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    meta = bw.MetaWeighter(pretext, bw.BetaWeights(N).double(), opt, _objective(),
                           meta_gradient=meta_gradient)
    idx = torch.tensor([2, 3, 6])
    b = pretext.batch(pairs[idx])  # the target runs here, once, under no_grad
    before = _target_state(pretext)
    assert not any(p.requires_grad for p in pretext.target.parameters())
    calls = []
    hook = pretext.target.net.register_forward_hook(lambda *a: calls.append(1))
    queue = pretext.queue.clone() if name == "moco" else None
    meta.backward(b.inputs, b.loss_fn, idx, copies=b.copies)
    assert meta.meta_steps == 1 and calls == []  # look-ahead and second pass: no target run
    for k, v in pretext.target.state_dict().items():
        assert torch.equal(v, before[k]), k
    opt.step()
    opt.zero_grad()
    for k, v in pretext.target.state_dict().items():  # the user's step leaves it too
        assert torch.equal(v, before[k]), k
    if queue is not None:
        assert torch.equal(pretext.queue, queue)
    hook.remove()
    pretext.after_step()  # the EMA update is the user's (the trainer's) call
    online = dict(pretext.online().named_parameters())
    m = pretext.target.momentum
    for k, v in pretext.target.net.named_parameters():
        torch.testing.assert_close(v, m * before[f"net.{k}"] + (1 - m) * online[k].detach())
    assert any(not torch.equal(v, before[f"net.{k}"])
               for k, v in pretext.target.net.named_parameters())


def test_moco_queue_takes_the_keys_after_the_step():
    pretext, opt, pairs = _setup("moco")
    ptr = int(pretext.queue_ptr)
    b = pretext.batch(pairs[:4])
    keys = F.normalize(pretext.target(b.inputs), dim=1)[0::2]  # first views' keys
    b.loss_fn(pretext(b.inputs)).mean().backward()
    opt.step()
    pretext.after_step()
    rows = (ptr + torch.arange(4)) % 16
    torch.testing.assert_close(pretext.queue[rows], keys)
    assert int(pretext.queue_ptr) == (ptr + 4) % 16


# -- bad input --------------------------------------------------------------------------
def test_a_loss_that_returns_a_scalar_is_refused():
    pretext, opt, pairs = _setup("simclr")
    meta = bw.MetaWeighter(pretext, bw.BetaWeights(N).double(), opt, _objective())
    b = pretext.batch(pairs[:3])
    with pytest.raises(LossShapeError, match="returned a scalar.*per-sample form"):
        meta.backward(b.inputs, lambda z: b.loss_fn(z).mean(), [0, 1, 2])


def test_views_that_do_not_line_up_with_copies_are_refused():
    pretext, opt, pairs = _setup("simclr")
    meta = bw.MetaWeighter(pretext, bw.BetaWeights(N).double(), opt, _objective())
    b = pretext.batch(pairs[:3])  # 6 rows: 3 instances x 2 views
    with pytest.raises(LossShapeError, match="6 rows but 2 indices x 2 copies.*interleave"):
        meta.backward(b.inputs, b.loss_fn, [0, 1], copies=2)
    with pytest.raises(LossShapeError, match="6 rows but 3 indices x 3 copies"):
        meta.backward(b.inputs, b.loss_fn, [0, 1, 2], copies=3)
    with pytest.raises(LossShapeError, match="multiple of the 2 views"):
        bw.pretext.nt_xent_loss(torch.randn(5, 4))
    with pytest.raises(LossShapeError, match="at least 2 views"):
        bw.pretext.nt_xent_loss(torch.randn(6, 4), copies=1)
    with pytest.raises(LossShapeError, match="line up one to one"):
        bw.pretext.interleave(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(LossShapeError, match=r"\(B, 2, C, H, W\)"):
        pretext.batch(torch.randn(3, 3, 3, 8, 8, dtype=torch.float64))
    assert meta.calls == 0  # refused before anything ran


def test_a_target_that_shares_parameters_with_the_online_network_is_refused():
    online = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(SharedParametersError, match="the online network itself"):
        MomentumTarget(online, target=online)
    shared_layer = torch.nn.Sequential(online[0], copy.deepcopy(online[1]))
    with pytest.raises(SharedParametersError, match="parameter '0.weight' shares memory"):
        MomentumTarget(online, target=shared_layer)
    shared_buffer = copy.deepcopy(online)
    shared_buffer[1].running_mean = online[1].running_mean
    with pytest.raises(SharedParametersError, match="buffer '1.running_mean'"):
        MomentumTarget(online, target=shared_buffer)
    target = MomentumTarget(online)  # a deep copy: fine, and frozen
    assert not any(p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    target.net[0].weight = online[0].weight  # tied later by hand: caught at the update
    with pytest.raises(SharedParametersError, match="shares memory"):
        target.update(online)


def test_momentum_target_moves_by_ema_and_checks_its_arguments():
    online = torch.nn.Linear(2, 2)
    target = MomentumTarget(online, momentum=0.75)
    start = target.net.weight.detach().clone()
    with torch.no_grad():
        online.weight.add_(4.0)
    target.update(online)
    torch.testing.assert_close(target.net.weight, 0.75 * start + 0.25 * online.weight.detach())
    out = target(torch.ones(1, 2))
    assert not out.requires_grad
    frozen, copied = MomentumTarget(online, 1.0), MomentumTarget(online, 0.0)
    before = frozen.net.weight.detach().clone()
    with torch.no_grad():
        online.weight.mul_(2.0)
    frozen.update(online)
    copied.update(online)
    assert torch.equal(frozen.net.weight, before)
    assert torch.equal(copied.net.weight, online.weight)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        MomentumTarget(online, 1.5)
    with pytest.raises(ValueError, match="do not match"):
        MomentumTarget(online, target=torch.nn.Linear(2, 3))


def test_the_unused_rotation_head_is_frozen_and_checkpoints_rebuild():
    pretext = _pretext("simclr")
    assert not any(p.requires_grad for p in pretext.backbone.head.parameters())
    assert all(p.requires_grad for n, p in pretext.backbone.named_parameters()
               if not n.startswith("head."))
    rebuilt = tiny_convnet(seed=1)
    rebuilt.load_state_dict(pretext.backbone.state_dict(), strict=True)
