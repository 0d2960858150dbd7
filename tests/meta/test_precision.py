"""Mixed precision: the meta-gradient under bf16/fp16 autocast against fp32, the GradScaler
contract, and a forced overflow that skips the meta update and recovers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import images, labelled

import betaweighter as bw
from betaweighter.models import conv_net

N = 16
IDX = torch.tensor([0, 3, 5, 6, 9, 12, 13, 15])


def _setup(lr=0.05):
    torch.manual_seed(0)
    model = conv_net(num_classes=4, width=16, blocks=2)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    target = labelled(24, 3, seed=2, size=16, dtype=torch.float32)
    tx, ty = target.tensors
    pool = images(N, seed=3, size=16, dtype=torch.float32)
    for s in range(2):  # a few steps so that the momentum buffers exist
        x, y = bw.rotate4(pool[s * 8:(s + 1) * 8])
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return model, opt, pool, (tx, ty)


def _update(precision, method="forward", lr=0.05, scaler=None):
    model, opt, pool, (tx, ty) = _setup(lr)
    weights = bw.BetaWeights(N)
    meta = bw.MetaWeighter(model, weights, opt, lambda m: F.cross_entropy(m(tx), ty),
                           weight_optimizer=bw.WeightOptimizer(lr=1.0, normalise=False),
                           meta_gradient=method, precision=precision, scaler=scaler)
    x, y = bw.rotate4(pool[IDX])
    torch.manual_seed(1)
    meta.backward(x, lambda o: F.cross_entropy(o, y, reduction="none"), IDX)
    return -weights.log_alpha.detach()[IDX].double(), meta, model


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method", ["forward", "finite_difference"])
def test_bf16_meta_gradient_agrees_with_fp32(method):
    ref, _, _ = _update("fp32", method)
    low, _, _ = _update("bf16", method)
    assert ref.abs().max() > 0
    assert _rel(low, ref) < 0.1  # bf16 keeps 8 bits of mantissa: measured 1-3 %


def test_fp16_with_a_scaler_and_a_tiny_learning_rate_does_not_underflow():
    """The forward-mode tangent is scaled to unit norm for the pass, so a look-ahead step
    of 1e-7 does not vanish in fp16."""
    ref, _, _ = _update("fp32", lr=1e-7)
    scaler = torch.amp.GradScaler("cpu")
    low, meta, model = _update("fp16", lr=1e-7, scaler=scaler)
    assert ref.abs().max() > 0 and meta.skipped_meta_steps == 0
    assert _rel(low, ref) < 0.1  # measured about 1 %
    # the model's .grad is left scaled, for the user's scaler.step(optimizer)
    plain, _, plain_model = _update("fp32", lr=1e-7)
    scale = scaler.get_scale()
    g, g_ref = model.head.weight.grad, plain_model.head.weight.grad
    assert float((g / scale - g_ref).norm() / g_ref.norm()) < 0.05


def test_a_forced_overflow_skips_the_meta_update_and_training_recovers():
    model, opt, pool, (tx, ty) = _setup()
    weights = bw.BetaWeights(N)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)  # overflows fp16 at once
    meta = bw.MetaWeighter(model, weights, opt, lambda m: F.cross_entropy(m(tx), ty),
                           precision="fp16", scaler=scaler)
    before = weights.state_dict()["log_alpha"].clone()
    for step in range(8):
        idx = IDX if step % 2 == 0 else torch.tensor([1, 2, 4, 7])
        x, y = bw.rotate4(pool[idx])
        meta.backward(x, lambda o, y=y: F.cross_entropy(o, y, reduction="none"), idx)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        if step == 0:
            assert meta.skipped_meta_steps == 1
            assert torch.equal(weights.log_alpha.detach(), before)  # nothing reached them
    assert meta.skipped_meta_steps < 8 and meta.meta_steps >= 1  # the scale came down
    assert torch.isfinite(weights.log_alpha).all() and torch.isfinite(weights.log_beta).all()
    assert not torch.equal(weights.log_alpha.detach(), before)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_non_finite_gradient_in_bf16_skips_the_meta_update():
    model, opt, pool, (tx, ty) = _setup()
    weights = bw.BetaWeights(N)
    meta = bw.MetaWeighter(model, weights, opt, lambda m: F.cross_entropy(m(tx), ty),
                           precision="bf16")
    handle = model.head.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    x, y = bw.rotate4(pool[IDX])
    meta.backward(x, lambda o: F.cross_entropy(o, y, reduction="none"), IDX)
    handle.remove()
    assert meta.skipped_meta_steps == 1 and meta.meta_steps == 0
    assert torch.isfinite(weights.log_alpha).all()
    opt.zero_grad()
    meta.backward(x, lambda o: F.cross_entropy(o, y, reduction="none"), IDX)
    assert meta.meta_steps == 1 and torch.isfinite(weights.log_alpha).all()
