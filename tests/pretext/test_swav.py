"""SwAV against its definition: Sinkhorn-Knopp's marginals and SwAV's own (exp-domain)
iteration, the swapped prediction against a direct loop, codes computed once per batch
(the queue included), prototypes kept on the sphere, and clear errors. The exact
meta-gradient is checked with the other pretexts in test_pretext_meta.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import images, tiny_convnet

import betaweighter as bw
from betaweighter.errors import LossShapeError
from betaweighter.pretext import SwappedPrediction, SwAVPretext, sinkhorn, swav_loss


def _scores(b: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, 6, generator=g, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(k, 6, generator=g, dtype=torch.float64), dim=1)
    return z @ c.t()


def _swav_reference(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """The iteration as SwAV's paper code writes it: Q = exp(S / eps)^T (K x B), divided by
    its sum, then rows / K and columns / B in turn; codes = (Q * B)^T."""
    q = torch.exp(scores / epsilon).t()
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


@pytest.mark.parametrize("b,k", [(8, 5), (6, 20)])
def test_sinkhorn_equals_swavs_iteration_and_has_the_marginals(b, k):
    s = _scores(b, k)
    codes = sinkhorn(s, epsilon=0.05, iterations=3)
    torch.testing.assert_close(codes, _swav_reference(s, 0.05, 3), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(codes.sum(1), torch.ones(b, dtype=torch.float64))  # exact
    assert (codes >= 0).all()
    # the prototype marginals: B / K each, approached as the iterations go on
    gap3 = (codes.sum(0) - b / k).abs().max()
    converged = sinkhorn(s, epsilon=0.05, iterations=500)
    torch.testing.assert_close(converged.sum(0), torch.full((k,), b / k, dtype=torch.float64),
                               rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(converged.sum(1), torch.ones(b, dtype=torch.float64))
    assert gap3 > (converged.sum(0) - b / k).abs().max()


def test_sinkhorn_in_the_log_domain_stays_finite_where_exp_overflows():
    s = (_scores(8, 5) * 100).float()  # exp(s / 0.05) overflows float32
    assert not torch.isfinite(torch.exp(s / 0.05)).all()
    codes = sinkhorn(s)
    assert codes.dtype == torch.float32 and torch.isfinite(codes).all()
    torch.testing.assert_close(codes.sum(1), torch.ones(8))
    assert not sinkhorn(s.requires_grad_()).requires_grad


def test_swapped_prediction_against_a_direct_loop():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(6, 4, generator=g, dtype=torch.float64)
    codes = torch.softmax(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    tau = 0.3
    want = []
    for r in range(6):
        other = r + 1 if r % 2 == 0 else r - 1  # the other view of r's image
        log_norm = math.log(sum(math.exp(float(scores[r, j]) / tau) for j in range(4)))
        want.append(-sum(float(codes[other, j]) * (float(scores[r, j]) / tau - log_norm)
                         for j in range(4)))
    torch.testing.assert_close(swav_loss(scores, codes, tau),
                               torch.tensor(want, dtype=torch.float64))
    # the mean over rows is SwAV's loss: the two swapped terms per image, averaged
    p = F.log_softmax(scores / tau, dim=1)
    swav = -0.5 * ((codes[1::2] * p[0::2]).sum(1).mean() + (codes[0::2] * p[1::2]).sum(1).mean())
    torch.testing.assert_close(swav_loss(scores, codes, tau).mean(), swav)
    s = scores.clone().requires_grad_()
    (grad,) = torch.autograd.grad(swav_loss(s, codes.requires_grad_(), tau).sum(), s)
    assert grad.abs().sum() > 0  # the codes are constants; the scores carry the gradient


def test_the_codes_are_computed_once_per_batch_from_the_first_call_per_view():
    s = _scores(8, 5)
    loss = SwappedPrediction(temperature=0.1, epsilon=0.05, iterations=3)
    first = loss(s)
    codes = loss.codes.clone()
    for view in (0, 1):  # each view's rows form their own Sinkhorn batch
        torch.testing.assert_close(codes[view::2], sinkhorn(s[view::2]))
    again = loss(_scores(8, 5, seed=9))  # a second call (the meta pass) reuses the codes
    assert torch.equal(loss.codes, codes)
    torch.testing.assert_close(first, swav_loss(s, codes, 0.1))
    torch.testing.assert_close(again, swav_loss(_scores(8, 5, seed=9), codes, 0.1))
    z = torch.randn(8, 3, dtype=torch.float64)
    queue = torch.stack([_scores(4, 5, seed=2), _scores(4, 5, seed=3)])
    with_queue = SwappedPrediction(queue_scores=queue)
    with_queue((z, s))  # a model's (projections, scores)
    assert torch.equal(with_queue.embeddings, z)
    for view in (0, 1):  # the queue joins each view's Sinkhorn batch; its codes are dropped
        want = sinkhorn(torch.cat([queue[view], s[view::2]]))[4:]
        torch.testing.assert_close(with_queue.codes[view::2], want)


def _pretext(**kw):
    torch.manual_seed(0)
    options = {"prototypes": 6, "hidden_dim": 8, "projection_dim": 5, **kw}
    return SwAVPretext(tiny_convnet(), **options).double()


def test_the_pretext_keeps_prototypes_on_the_sphere_and_fills_its_queue():
    pretext = _pretext(queue_size=4)
    norms = pretext.prototypes.weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    opt = torch.optim.SGD([p for p in pretext.parameters() if p.requires_grad], lr=0.5)
    pairs = images(12, seed=3).view(6, 2, 3, 8, 8)
    used = []
    for step in range(3):
        b = pretext.batch(pairs[2 * step:2 * step + 2])  # 2 images: 2 projections per view
        used.append(b.loss_fn.queue_scores is not None)
        z, scores = pretext(b.inputs)
        torch.testing.assert_close(z.norm(dim=1), torch.ones(4, dtype=torch.float64))
        b.loss_fn((z, scores)).mean().backward()
        opt.step()
        opt.zero_grad()
        moved = pretext.prototypes.weight.norm(dim=1)
        assert (moved - 1).abs().max() > 1e-6  # the step left the sphere
        pretext.after_step()
        norms = pretext.prototypes.weight.norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
        if step == 0:
            torch.testing.assert_close(pretext.queue[:, :2], torch.stack([z[0::2], z[1::2]]))
    assert used == [False, False, True]  # the queue joins Sinkhorn once it is full
    assert int(pretext.queue_filled) == 4


def test_a_meta_step_runs_sinkhorn_once_and_leaves_the_codes(monkeypatch):
    import betaweighter.pretext.swav as swav

    calls = []
    monkeypatch.setattr(swav, "sinkhorn", lambda *a: calls.append(1) or sinkhorn(*a))
    pretext = _pretext()
    opt = torch.optim.SGD([p for p in pretext.parameters() if p.requires_grad], lr=0.1)
    x, y = images(12, seed=4), torch.arange(12) % 3
    head = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    meta = bw.MetaWeighter(pretext, bw.BetaWeights(8).double(), opt,
                           lambda m: F.cross_entropy(m.features(x) @ head, y),
                           meta_gradient="forward")
    b = pretext.batch(images(8, seed=5).view(4, 2, 3, 8, 8))
    meta.backward(b.inputs, b.loss_fn, torch.arange(4), copies=b.copies)
    assert meta.meta_steps == 1 and len(calls) == 2  # one Sinkhorn per view, in one call


def test_bad_input_is_refused_with_one_clear_error():
    with pytest.raises(LossShapeError, match=r"scores \(B, K\)"):
        sinkhorn(torch.randn(4))
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        sinkhorn(torch.randn(4, 3), epsilon=0)
    with pytest.raises(ValueError, match="iterations must be a positive integer"):
        sinkhorn(torch.randn(4, 3), iterations=0)
    with pytest.raises(LossShapeError, match="n even"):
        swav_loss(torch.randn(3, 4), torch.rand(3, 4))
    with pytest.raises(LossShapeError, match="n even"):
        SwappedPrediction()(torch.randn(5, 4))
    with pytest.raises(LossShapeError, match=r"\(2, Q, K\)"):
        SwappedPrediction(queue_scores=torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match="prototypes must be an integer >= 1"):
        _pretext(prototypes=0)
    with pytest.raises(ValueError, match="queue_size must be an integer >= 0"):
        _pretext(queue_size=-1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        _pretext(temperature=0)
