"""MAE: the per-image loss against its definition, the masking, and the meta-gradient in
float64 on a tiny ViT (forward mode and finite differences equal the double backward with
the mask the training forward drew; a redrawn mask is caught)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from helpers import images, labelled, tiny_convnet

import betaweighter as bw
from betaweighter.errors import DataError, LossShapeError
from betaweighter.meta.replay import RandomState
from betaweighter.models import vit_tiny
from betaweighter.pretext.mae import MAEPretext, mae_loss, patchify, random_masking

N, B = 8, 3


def _mae(seed=0, **kw):
    torch.manual_seed(seed)
    backbone = vit_tiny(image_size=8, patch_size=4, blocks=1)
    return MAEPretext(backbone, decoder_dim=8, decoder_layers=1, decoder_heads=2, **kw).double()


def test_patchify_cuts_row_major_patches():
    x = images(2, size=8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 48)
    for i in range(2):
        for j in range(2):
            ref = x[1, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].permute(1, 2, 0).flatten()
            assert torch.equal(p[1, 2 * i + j], ref)


def test_random_masking_keeps_a_quarter_distinct_and_varies():
    torch.manual_seed(0)
    keep = random_masking(50, 64, 0.75)
    assert keep.shape == (50, 16)
    assert all(len(set(row.tolist())) == 16 for row in keep)
    assert len({tuple(sorted(row.tolist())) for row in keep}) == 50
    assert random_masking(2, 4, 0.99).shape == (2, 1)  # at least one visible, one hidden
    assert random_masking(2, 4, 0.01).shape == (2, 3)


def test_the_loss_is_the_mean_error_over_each_images_masked_patches():
    mae = _mae()
    x = images(2, size=8)
    keep = torch.tensor([[0], [3]])
    pred, target, mask = mae(x, keep)
    assert torch.equal(mask, torch.tensor([[0., 1, 1, 1], [1, 1, 1, 0]]))
    t = patchify(x, 4)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(target, t)
    per_patch = ((pred - t) ** 2).mean(-1)
    ref = torch.stack([per_patch[0, 1:].mean(), per_patch[1, :3].mean()])
    loss = mae_loss((pred, target, mask))
    assert torch.allclose(loss, ref)
    # the visible patches' predictions do not count
    (g,) = torch.autograd.grad(loss.sum(), pred)
    assert g[0, 0].abs().max() == 0 and g[1, 3].abs().max() == 0 and g[0, 1].abs().max() > 0
    raw = _mae(norm_pix_loss=False)(x, keep)[1]
    assert torch.equal(raw, patchify(x, 4))


def _objective():
    x, y = labelled(12, 3, seed=4).tensors
    head = torch.randn(192, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def objective(model):
        return F.cross_entropy(model.features(x) @ head, y)

    return objective


def _meta_step(meta_gradient, replay=True, monkeypatch=None):
    """The change of the BDW parameters after one MetaWeighter call (raw SGD, lr 1), after
    two real steps; the mask is drawn inside the call from seed 7."""
    mae = _mae()
    opt = torch.optim.SGD([p for p in mae.parameters() if p.requires_grad], lr=0.1,
                          momentum=0.9)
    pool = images(N, seed=3, size=8)
    for s in range(2):
        b = mae.batch(pool[s * B:(s + 1) * B])
        b.loss_fn(mae(b.inputs)).mean().backward()
        opt.step()
        opt.zero_grad()
    weights = bw.BetaWeights(N).double()
    with torch.no_grad():
        weights.log_alpha.copy_(torch.linspace(-0.5, 0.7, N, dtype=torch.float64))
    meta = bw.MetaWeighter(mae, weights, opt, _objective(),
                           weight_optimizer=bw.WeightOptimizer("sgd", lr=1.0, normalise=False),
                           meta_gradient=meta_gradient)
    if not replay:  # what a forgotten replay would do: the second pass redraws the mask
        monkeypatch.setattr(RandomState, "replay", lambda self: contextlib.nullcontext())
    idx = torch.tensor([0, 4, 7])
    b = mae.batch(pool[idx])
    before = [p.detach().clone() for p in weights.parameters()]
    torch.manual_seed(7)
    meta.backward(b.inputs, b.loss_fn, idx, copies=b.copies)
    return torch.cat([(p0 - p.detach())[idx] for p0, p in zip(before, weights.parameters())])


def test_forward_mode_and_differences_equal_the_double_backward():
    ref = _meta_step("double_backward")
    assert ref.abs().max() > 1e-8, "degenerate test: the meta-gradient is ~0"
    fast = _meta_step("forward")
    assert (fast - ref).abs().max() / ref.abs().max() <= 1e-9
    fd = _meta_step("finite_difference")
    assert (fd - ref).abs().max() / ref.abs().max() <= 1e-6


def test_a_redrawn_mask_is_caught(monkeypatch):
    with pytest.raises(RuntimeError, match="not reproducible"):
        _meta_step("forward", replay=False, monkeypatch=monkeypatch)


def test_the_replayed_forward_draws_the_same_mask():
    mae = _mae()
    x = images(4, size=8)
    state = RandomState(torch.device("cpu"))
    first = mae(x)[2]
    with state.replay():
        again = mae(x)[2]
    redrawn = torch.stack([mae(x)[2] for _ in range(5)])
    assert torch.equal(first, again)
    assert not all(torch.equal(first, r) for r in redrawn)


def test_bad_backbones_options_and_inputs_are_refused():
    with pytest.raises(TypeError, match="needs a Vision Transformer backbone"):
        MAEPretext(tiny_convnet())
    backbone = vit_tiny(image_size=8, patch_size=4, blocks=1)
    with pytest.raises(ValueError, match="mask_ratio"):
        MAEPretext(backbone, mask_ratio=1.0)
    with pytest.raises(ValueError, match="multiple of decoder_heads"):
        MAEPretext(backbone, decoder_dim=10, decoder_heads=4)
    with pytest.raises(DataError, match="takes images of 8x8 px"):
        MAEPretext(backbone)(torch.randn(2, 3, 16, 16))
    with pytest.raises(LossShapeError, match="predictions, targets, mask"):
        mae_loss(torch.zeros(2, 4))
