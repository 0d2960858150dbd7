"""Per-instance optimisation touches only the batch's rows, unless dense mode is asked for."""

from __future__ import annotations

import pytest
import torch

import betaweighter as bw
from betaweighter.weights.optimizer import InstanceOptimizer

N = 20
BATCHES = [torch.tensor([0, 1, 2]), torch.tensor([5, 6]), torch.tensor([10, 11, 12])]


def _run(dense, kind="sgd"):
    w = bw.BetaWeights(N).double()
    opt = InstanceOptimizer(w, lr=0.1, kind=kind, momentum=0.9, dense=dense)
    touched = []
    for idx in BATCHES:
        before = w.log_alpha.detach().clone()
        (w.sample(idx) * torch.arange(1, len(idx) + 1)).sum().backward()
        opt.step(idx)
        touched.append(set(torch.nonzero(w.log_alpha.detach() != before).flatten().tolist()))
    return w, touched


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_sparse_updates_touch_only_the_batch(kind):
    torch.manual_seed(0)
    _, touched = _run(dense=False, kind=kind)
    for idx, t in zip(BATCHES, touched):
        assert t == set(idx.tolist())


def test_dense_reference_mode_reproduces_the_drift():
    torch.manual_seed(0)
    _, touched = _run(dense=True)
    # stale momentum keeps moving instances that left the batch (bdw_spec.md, 6.10)
    assert touched[0] == {0, 1, 2}
    assert touched[1] == {0, 1, 2, 5, 6}
    assert touched[2] == {0, 1, 2, 5, 6, 10, 11, 12}


def test_dense_mode_equals_torch_sgd_on_dense_gradients():
    w = bw.BetaWeights(N).double()
    ref = torch.nn.Parameter(w.log_alpha.detach().clone())
    opt = InstanceOptimizer(w, lr=0.5, momentum=0.9, dense=True)
    ref_opt = torch.optim.SGD([ref], lr=0.5, momentum=0.9)
    for idx in BATCHES:
        g = torch.zeros(N, dtype=torch.float64)
        g[idx] = torch.linspace(-1, 1, len(idx), dtype=torch.float64)
        w.log_alpha.grad = g.clone()
        ref.grad = g.clone()
        opt.step(idx)
        ref_opt.step()
    torch.testing.assert_close(w.log_alpha.detach(), ref.detach())


def test_sparse_sgd_and_adam_rows_follow_their_own_history():
    """A row that is in every batch follows exactly torch's SGD/Adam; a row seen once moves once."""
    cases = [("sgd", torch.optim.SGD, {"momentum": 0.9}, (0.502, 0.488)),
             ("adam", torch.optim.Adam, {}, (0.51, 0.49))]
    for kind, ref_cls, kw, once in cases:
        w = bw.PointWeights(4).double()
        opt = InstanceOptimizer(w, lr=0.01, kind=kind, momentum=0.9)
        ref = torch.nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
        ref_opt = ref_cls([ref], lr=0.01, **kw)
        for step in range(4):
            idx = torch.tensor([0, step % 3 + 1])
            w.value.grad = torch.tensor([0.3, 0.2, -0.1, 0.4], dtype=torch.float64) * (step + 1)
            opt.step(idx)
            ref.grad = torch.tensor([0.3 * (step + 1)], dtype=torch.float64)
            ref_opt.step()
        torch.testing.assert_close(w.value[:1].detach(), ref.detach())
        # rows 2 and 3 were in one batch each (steps 1 and 2): exactly one first step
        torch.testing.assert_close(w.value[2:].detach(), torch.tensor(once, dtype=torch.float64),
                                   rtol=0, atol=1e-6)


def test_nonfinite_gradients_are_dropped_and_counted():
    w = bw.BetaWeights(3)
    opt = InstanceOptimizer(w, lr=1.0)
    w.log_alpha.grad = torch.tensor([float("nan"), 1.0, 0.0])
    opt.step(torch.tensor([0, 1]))
    assert opt.nonfinite_steps == 1
    assert torch.isfinite(w.log_alpha).all() and float(w.log_alpha[0].detach()) == 0.0


def test_state_dict_round_trip_and_mismatch():
    w = bw.BetaWeights(5)
    opt = InstanceOptimizer(w, lr=0.1)
    w.sample(torch.tensor([1, 2])).sum().backward()
    opt.step(torch.tensor([1, 2]))
    state = opt.state_dict()
    opt2 = InstanceOptimizer(bw.BetaWeights(5), lr=0.3)
    opt2.load_state_dict(state)
    assert opt2.lr == 0.1
    torch.testing.assert_close(opt2._state["log_alpha"]["momentum_buffer"],
                               opt._state["log_alpha"]["momentum_buffer"])
    with pytest.raises(ValueError, match="same settings"):
        InstanceOptimizer(bw.BetaWeights(5), lr=0.1, kind="adam").load_state_dict(state)


def test_bad_settings():
    with pytest.raises(ValueError, match="one of"):
        InstanceOptimizer(bw.BetaWeights(2), lr=0.1, kind="rmsprop")
    with pytest.raises(ValueError, match="> 0"):
        InstanceOptimizer(bw.BetaWeights(2), lr=0.0)
