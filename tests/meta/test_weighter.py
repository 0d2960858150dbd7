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


@pytest.mark.parametrize("meta_gradient", ["forward", "finite_difference", "double_backward",
                                           "higher"])
@pytest.mark.parametrize("update_buffers", [True, False])
def test_backward_leaves_model_and_grads_as_a_plain_backward(meta_gradient, update_buffers):
    model = tiny_convnet()
    meta, _ = _weighter(model, meta_gradient=meta_gradient, update_buffers=update_buffers)
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


def test_rule_needs_no_objective_and_runs_no_meta_step():
    model = tiny_convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    meta = bw.MetaWeighter(model, bw.RandomWeights(N, resample=True), opt)
    x, y = bw.rotate4(images(2))
    meta.backward(x, _ce(y), [0, 1])
    assert meta.meta_steps == 0 and meta.calls == 1


def test_grads_accumulate_like_backward_and_hooks_fire_once_per_call():
    model = tiny_convnet()
    calls = []
    model.head.weight.register_hook(lambda g: calls.append(1))
    meta, _ = _weighter(model, weights=bw.UniformWeights(N))
    x, y = bw.rotate4(images(2))
    meta.backward(x, _ce(y), [0, 1])
    first = [p.grad.clone() for p in model.parameters()]
    meta.backward(x, _ce(y), [0, 1])
    for g1, p in zip(first, model.parameters()):
        torch.testing.assert_close(p.grad, 2 * g1)
    learned, _ = _weighter(model)  # with a meta step: still one ordinary backward per call
    learned.backward(x, _ce(y), [0, 1])
    assert len(calls) == 3


def test_meta_update_uses_this_calls_gradient_not_the_accumulated_one():
    """With gradients already in .grad (accumulation), the look-ahead steps with this call's
    gradient only: the weight update equals the one from a clean .grad."""
    def update(pre_existing):
        model = tiny_convnet()
        meta, _ = _weighter(model, weight_optimizer=bw.WeightOptimizer(lr=1.0,
                                                                        normalise=False))
        if pre_existing:
            for p in model.parameters():
                p.grad = torch.randn_like(p)
        x, y = bw.rotate4(images(3, seed=5))
        before = meta.weights.log_alpha.detach().clone()
        torch.manual_seed(0)
        meta.backward(x, _ce(y), [1, 2, 3])
        return meta.weights.log_alpha.detach() - before

    torch.testing.assert_close(update(True), update(False), rtol=1e-10, atol=1e-12)


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


def test_hundreds_of_steps_at_huge_weight_lr_stay_finite_and_leak_nothing():
    """300 steps at a weight learning rate of 1e3: the concentrations pin at their bounds
    within the first few dozen, and a leak of one tensor per step would show as +280."""
    torch.manual_seed(0)
    model = _Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    target = torch.utils.data.TensorDataset(torch.randn(40, 6), torch.arange(40) % 4)
    weights = bw.BetaWeights(64)
    meta = bw.MetaWeighter(model, weights, opt, bw.ClassificationLoss(batch_size=16),
                           target=target,
                           weight_optimizer=bw.WeightOptimizer(lr=1e3, normalise=False))
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
    for _ in range(280):
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
def test_indices_length_must_match_the_batch():
    meta, _ = _weighter(tiny_convnet())
    x, y = bw.rotate4(images(3))
    with pytest.raises(ValueError, match="12 rows but indices has 5"):
        meta.backward(x, _ce(y), torch.arange(5))
    for wrong in (6, 12):  # 2B and 4B indices for a 4B-row batch: a multiple, still wrong
        with pytest.raises(ValueError, match=rf"{wrong} indices x 4 copies"):
            meta.backward(x, _ce(y), torch.arange(wrong) % N, copies=4)
    with pytest.raises(ValueError, match="copies must be a positive integer"):
        meta.backward(x, _ce(y), torch.arange(3), copies=0)


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
    # checked before the loss runs: the user's loss would fail first with a torch error
    with pytest.raises(ValueError, match=r"output of shape \(7, 4\) for a batch of 8"):
        meta.backward(x, _ce(y), [0, 1])


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


def test_bad_combinations_fail_at_construction():
    model = tiny_convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    objective = bw.PrototypicalLoss(3, 2, 2)
    target = labelled(24, 3, seed=2)

    def fails(error, match, weights=None, **kw):
        with pytest.raises(error, match=match):
            bw.MetaWeighter(model, weights if weights is not None else bw.BetaWeights(N), opt,
                            objective, target=target, **kw)

    with pytest.raises(TypeError, match="Rprop"):
        bw.MetaWeighter(model, bw.BetaWeights(N), torch.optim.Rprop(model.parameters()),
                        lambda m: torch.zeros(()))
    fails(ValueError, "meta_gradient must be one of", meta_gradient="reverse")
    fails(ValueError, "precision must be one of", precision="fp8")
    fails(ValueError, "needs a GradScaler", precision="fp16")
    fails(ValueError, "full precision only", precision="bf16", meta_gradient="double_backward")
    fails(ValueError, r"MetaWeighter every: 0 is out of range \[1, inf\)", every=0)
    fails(ValueError, r"MetaWeighter inner_steps: expected an integer", inner_steps=1.5)
    fails(ValueError, r"MetaWeighter direction_decay: 1 is out of range \[0, 1\)",
          direction_decay=1)
    fails(ValueError, "needs every=1", weights=bw.L2RW(N), every=2)
    fails(ValueError, "normalise=False", weights=bw.L2RW(N), normalise=True)
    fails(ValueError, "nothing to optimise", weights=bw.UniformWeights(N),
          weight_optimizer=bw.WeightOptimizer())
    fails(TypeError, "must be a betaweighter.WeightOptimizer", weight_optimizer="sgd")
    fails(TypeError, "weighting method", weights=torch.ones(N))
    with pytest.raises(TypeError, match="objective must be callable"):
        bw.MetaWeighter(model, bw.BetaWeights(N), opt)
    bw.MetaWeighter(model, bw.UniformWeights(N), opt)  # a rule without meta needs nothing


def test_running_direction_updates_every_batch_and_averages_the_episodes():
    """direction='running': the episode runs every k-th call, the weights move on every
    call; with decay 0 an episode call is exactly the fresh update."""
    x, y = bw.rotate4(images(3, seed=5))

    def make(**kw):
        model = tiny_convnet()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return bw.MetaWeighter(model, bw.BetaWeights(N).double(), opt,
                               bw.PrototypicalLoss(3, 2, 2), target=labelled(24, 3, seed=2),
                               weight_optimizer=bw.WeightOptimizer(lr=1.0, normalise=False),
                               **kw)

    fresh, running = make(), make(direction="running", direction_decay=0.0, every=2)
    for meta in (fresh, running):
        torch.manual_seed(0)
        meta.backward(x, _ce(y), [1, 2, 3])
    torch.testing.assert_close(running.weights.log_alpha, fresh.weights.log_alpha)
    before = running.weights.log_alpha.detach().clone()
    running.backward(x, _ce(y), [4, 5, 6])  # no episode: the stored direction is reused
    assert running.episodes == 1 and running.meta_steps == 2 and running.calls == 2
    assert not torch.equal(running.weights.log_alpha[4:7], before[4:7])
    state = running.state_dict()["running_direction"]
    assert state["weight"] == 1.0
    averaged = make(direction="running", direction_decay=0.5)
    for _ in range(2):
        averaged.backward(x, _ce(y), [1, 2, 3])
    assert averaged.state_dict()["running_direction"]["weight"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="direction='fresh'"):
        make(direction="running", meta_gradient="double_backward")
    model = tiny_convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="direction='fresh'"):
        bw.MetaWeighter(model, bw.L2RW(N), opt, lambda m: m.params["head.bias"].sum(),
                        direction="running")
    bw.MetaWeighter(model, bw.UniformWeights(N), opt, direction="running")  # moot: no meta
