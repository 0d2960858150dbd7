"""MetaWeighter's contract with the user's loop: what backward leaves behind."""

from __future__ import annotations

import copy
import gc
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import images, labelled, tiny_convnet
from torch import nn

import betaweighter as bw

N = 10


def _ce(y):
    return lambda out: F.cross_entropy(out, y, reduction="none")


def _weighter(model, weights=None, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    target = labelled(24, 3, seed=2)
    weights = weights if weights is not None else bw.BetaWeights(N).double()
    return bw.MetaWeighter(model, weights, opt, bw.PrototypicalLoss(3, 2, 2), target=target,
                           **kw), opt


@pytest.mark.parametrize("engine,meta_gradient", [("func", "forward"), ("func", "double_backward"),
                                                  ("higher", "auto")])
@pytest.mark.parametrize("update_buffers", [True, False])
def test_backward_leaves_model_and_grads_as_a_plain_backward(engine, meta_gradient,
                                                             update_buffers):
    model = tiny_convnet()
    meta, _ = _weighter(model, engine=engine, meta_gradient=meta_gradient,
                        update_buffers=update_buffers)
    idx = torch.tensor([2, 3, 7])
    x, y = bw.rotate4(images(3, seed=5))
    reference = copy.deepcopy(model)
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers_before = {n: b.clone() for n, b in model.named_buffers()}

    torch.manual_seed(0)
    w = meta.weights.sample(idx).detach()
    torch.manual_seed(0)
    loss = meta.backward(x, _ce(y), idx)

    # what the user's plain loop would have done with the same sampled weights
    expected = (w.repeat_interleave(4) * F.cross_entropy(reference(x), y, reduction="none")).mean()
    expected.backward()
    torch.testing.assert_close(loss, expected.detach())
    for (n, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(p.detach(), params_before[n]), n
        assert p.grad is not None and p.grad.grad_fn is None and not p.grad.requires_grad
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)
    for (n, b), (_, rb) in zip(model.named_buffers(), reference.named_buffers()):
        if update_buffers:  # one plain forward's worth of BatchNorm statistics, no more
            assert torch.equal(b, rb), n
        else:
            assert torch.equal(b, buffers_before[n]), n
    assert meta.last_meta_loss == meta.last_meta_loss  # not NaN
    assert 0 < meta.last_mean_weight < 1


def test_grads_accumulate_like_backward():
    model = tiny_convnet()
    meta, _ = _weighter(model, weights=bw.UniformWeights(N))
    x, y = bw.rotate4(images(2))
    meta.backward(x, _ce(y), [0, 1])
    first = [p.grad.clone() for p in model.parameters()]
    meta.backward(x, _ce(y), [0, 1])
    for g1, p in zip(first, model.parameters()):
        torch.testing.assert_close(p.grad, 2 * g1)


def test_every_k_runs_the_meta_update_on_every_kth_call_only():
    model = tiny_convnet()
    meta, opt = _weighter(model, every=3)
    x, y = bw.rotate4(images(2))
    changed = []
    for _ in range(7):
        before = meta.weights.log_alpha.detach().clone()
        meta.backward(x, _ce(y), [0, 1])
        opt.step()
        opt.zero_grad()
        changed.append(not torch.equal(before, meta.weights.log_alpha))
    assert changed == [True, False, False, True, False, False, True]


def test_uniform_weights_reduce_to_plain_training():
    model = tiny_convnet()
    reference = copy.deepcopy(model)
    meta, _ = _weighter(model, weights=bw.UniformWeights(N))
    x, y = bw.rotate4(images(2))
    meta.backward(x, _ce(y), [0, 1])
    F.cross_entropy(reference(x), y).backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def test_thousand_steps_at_huge_weight_lr_stay_finite_and_leak_nothing():
    torch.manual_seed(0)
    model = _Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    target = torch.utils.data.TensorDataset(torch.randn(40, 6), torch.arange(40) % 4)
    weights = bw.BetaWeights(64)
    meta = bw.MetaWeighter(model, weights, opt, bw.ClassificationLoss(batch_size=16),
                           target=target, weight_lr=1e3)
    pool = torch.randn(64, 6)
    labels = torch.randint(0, 4, (64,))
    g = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randperm(64, generator=g)[:8]
        meta.backward(pool[idx], _ce(labels[idx]), idx)
        opt.step()
        opt.zero_grad()

    for _ in range(20):
        step()
    live = _live_tensors()
    for _ in range(980):
        step()
    assert _live_tensors() <= live + 5
    a, b = weights.concentrations()
    assert torch.isfinite(weights.log_alpha).all() and torch.isfinite(weights.log_beta).all()
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a >= 1e-2 - 1e-6).all() and (b <= 1e3 + 1e-3).all()
    w = weights.sample(torch.arange(64))
    assert torch.isfinite(w).all() and (w > 0).all() and (w < 1).all()
    assert torch.isfinite(torch.cat([p.flatten() for p in model.parameters()])).all()


# --- bad input: one clear error each -------------------------------------------------------
def test_indices_length_must_divide_the_batch():
    meta, _ = _weighter(tiny_convnet())
    x, y = bw.rotate4(images(3))
    with pytest.raises(ValueError, match="12 rows but indices has 5"):
        meta.backward(x, _ce(y), torch.arange(5))


def test_model_output_with_wrong_batch_size():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4).double()

        def forward(self, x):
            return self.lin(x.mean((2, 3)))[:-1]

    model = Broken()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    meta = bw.MetaWeighter(model, bw.BetaWeights(N).double(), opt,
                           lambda m: m.params["lin.bias"].sum())
    x, y = bw.rotate4(images(2))
    with pytest.raises(ValueError, match=r"output of shape \(7, 4\) for a batch of 8"):
        meta.backward(x, _ce(y[:-1]), [0, 1])


def test_scalar_per_sample_loss():
    meta, _ = _weighter(tiny_convnet())
    x, y = bw.rotate4(images(2))
    with pytest.raises(ValueError, match="reduction='none'"):
        meta.backward(x, lambda out: F.cross_entropy(out, y), [0, 1])


def test_out_of_range_indices():
    meta, _ = _weighter(tiny_convnet())
    x, y = bw.rotate4(images(2))
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        meta.backward(x, _ce(y), [3, 10])


def test_objective_without_target_data():
    model = tiny_convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="target=your_labelled_dataset"):
        bw.MetaWeighter(model, bw.BetaWeights(N), opt, bw.PrototypicalLoss(2, 1, 1))


def test_unsupported_model_optimizer_fails_at_construction():
    model = tiny_convnet()
    with pytest.raises(TypeError, match="RMSprop"):
        bw.MetaWeighter(model, bw.BetaWeights(N), torch.optim.RMSprop(model.parameters()),
                        lambda m: torch.zeros(()))
