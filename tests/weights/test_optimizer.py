"""WeightOptimizer: row-sparse updates, the reference dense mode, and the scale-free
normalisation."""

from __future__ import annotations

import math

import pytest
import torch

import betaweighter as bw

N = 20
BATCHES = [torch.tensor([0, 1, 2]), torch.tensor([5, 6]), torch.tensor([10, 11, 12])]


def _run(dense, kind="sgd", normalise=False):
    w = bw.BetaWeights(N).double()
    opt = bw.WeightOptimizer(kind, lr=0.1, momentum=0.9, dense=dense,
                             normalise=normalise).bind(w)
    touched = []
    for idx in BATCHES:
        before = w.log_alpha.detach().clone()
        (w.sample(idx) * torch.arange(1, len(idx) + 1)).sum().backward()
        opt.step(idx)
        touched.append(set(torch.nonzero(w.log_alpha.detach() != before).flatten().tolist()))
    return w, opt, touched


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("normalise", [False, True])
def test_sparse_updates_touch_only_the_batch(kind, normalise):
    torch.manual_seed(0)
    _, opt, touched = _run(dense=False, kind=kind, normalise=normalise)
    for idx, t in zip(BATCHES, touched):
        assert t == set(idx.tolist())
    assert opt.visits.tolist() == [1 if i in {0, 1, 2, 5, 6, 10, 11, 12} else 0
                                   for i in range(N)]


def test_dense_reference_mode_reproduces_the_drift():
    torch.manual_seed(0)
    _, _, touched = _run(dense=True)
    # stale momentum keeps moving instances that left the batch, as the reference code did
    assert touched == [{0, 1, 2}, {0, 1, 2, 5, 6}, {0, 1, 2, 5, 6, 10, 11, 12}]


def test_dense_mode_equals_torch_sgd_on_dense_gradients():
    w = bw.BetaWeights(N).double()
    ref = torch.nn.Parameter(w.log_alpha.detach().clone())
    opt = bw.WeightOptimizer("sgd", lr=0.5, momentum=0.9, dense=True, normalise=False).bind(w)
    ref_opt = torch.optim.SGD([ref], lr=0.5, momentum=0.9)
    for idx in BATCHES:
        g = torch.zeros(N, dtype=torch.float64)
        g[idx] = torch.linspace(-1, 1, len(idx), dtype=torch.float64)
        w.log_alpha.grad = g.clone()
        ref.grad = g.clone()
        opt.step(idx)
        ref_opt.step()
    torch.testing.assert_close(w.log_alpha.detach(), ref.detach())


def test_the_paper_update_by_name_is_raw_dense_sgd_with_momentum():
    w = bw.BetaWeights(N).double()
    ref = torch.nn.Parameter(w.log_alpha.detach().clone())
    opt = bw.WeightOptimizer.paper().bind(w)
    ref_opt = torch.optim.SGD([ref], lr=1.0, momentum=0.9)
    for scale, idx in zip([1e-3, 1.0, 2.0], BATCHES):  # raw: the step follows the scale
        g = torch.zeros(N, dtype=torch.float64)
        g[idx] = scale * torch.linspace(-1, 1, len(idx), dtype=torch.float64)
        w.log_alpha.grad, ref.grad = g.clone(), g.clone()
        opt.step(idx)
        ref_opt.step()
    torch.testing.assert_close(w.log_alpha.detach(), ref.detach())
    assert opt.settings["normalise"] is False and opt.settings["dense"] is True


def test_sparse_sgd_and_adam_rows_follow_their_own_history():
    """A row that is in every batch follows exactly torch's SGD/Adam; a row seen once moves
    once."""
    cases = [("sgd", torch.optim.SGD, {"momentum": 0.9}, (0.502, 0.488)),
             ("adam", torch.optim.Adam, {}, (0.51, 0.49))]
    for kind, ref_cls, kw, once in cases:
        w = bw.PointWeights(4).double()
        opt = bw.WeightOptimizer(kind, lr=0.01, momentum=0.9, normalise=False).bind(w)
        ref = torch.nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
        ref_opt = ref_cls([ref], lr=0.01, **kw)
        for step in range(4):
            idx = torch.tensor([0, step % 3 + 1])
            w.value.grad = torch.tensor([0.3, 0.2, -0.1, 0.4], dtype=torch.float64) * (step + 1)
            opt.step(idx)
            ref.grad = torch.tensor([0.3 * (step + 1)], dtype=torch.float64)
            ref_opt.step()
        torch.testing.assert_close(w.value[:1].detach(), ref.detach())
        torch.testing.assert_close(w.value[2:].detach(), torch.tensor(once, dtype=torch.float64),
                                   rtol=0, atol=1e-6)


def test_normalised_step_is_the_gradient_over_its_running_rms():
    """Check the update against the formula: s_t = rho s + (1 - rho) mean(g^2) over the
    touched rows, bias-corrected; step = lr * g / sqrt(s_hat)."""
    w = bw.PointWeights(6).double()
    opt = bw.WeightOptimizer("sgd", lr=0.01, rms_decay=0.9).bind(w)
    grads = [torch.tensor([3.0, -1.0, 0, 0, 0, 0]), torch.tensor([0, 0, 0.5, 2.0, 0, 0]),
             torch.tensor([1.0, 0, 0, 0, 0, -4.0])]
    rows = [[0, 1], [2, 3], [0, 5]]
    s, expected = 0.0, w.value.detach().clone()
    for t, (g, r) in enumerate(zip(grads, rows), start=1):
        g = g.double()
        s = 0.9 * s + 0.1 * float(g[r].pow(2).mean())
        scale = math.sqrt(s / (1 - 0.9 ** t))
        expected -= 0.01 * g / scale
        w.value.grad = g.clone()
        opt.step(torch.tensor(r))
        torch.testing.assert_close(w.value.detach(), expected.clamp(0, 1))
        assert opt.scale == pytest.approx(scale)


def test_normalised_trajectory_ignores_the_gradient_scale():
    """Any constant factor on every gradient leaves the normalised trajectory unchanged."""
    def trajectory(factor):
        torch.manual_seed(0)
        w = bw.BetaWeights(N).double()
        opt = bw.WeightOptimizer("sgd", lr=0.3, momentum=0.5).bind(w)
        out = []
        for step in range(6):
            idx = BATCHES[step % 3]
            torch.manual_seed(step)
            (factor * w.sample(idx) * torch.arange(1, len(idx) + 1)).sum().backward()
            opt.step(idx)
            out.append(w.log_alpha.detach().clone())
        return torch.stack(out)

    torch.testing.assert_close(trajectory(1e-3), trajectory(100.0), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(trajectory(1.0), _raw_trajectory())


def _raw_trajectory():
    torch.manual_seed(0)
    w = bw.BetaWeights(N).double()
    opt = bw.WeightOptimizer("sgd", lr=0.3, momentum=0.5, normalise=False).bind(w)
    out = []
    for step in range(6):
        idx = BATCHES[step % 3]
        torch.manual_seed(step)
        (w.sample(idx) * torch.arange(1, len(idx) + 1)).sum().backward()
        opt.step(idx)
        out.append(w.log_alpha.detach().clone())
    return torch.stack(out)


def test_nonfinite_gradients_are_dropped_and_counted():
    w = bw.BetaWeights(3)
    opt = bw.WeightOptimizer(lr=1.0, normalise=False).bind(w)
    w.log_alpha.grad = torch.tensor([float("nan"), 1.0, 0.0])
    opt.step(torch.tensor([0, 1]))
    assert opt.nonfinite_steps == 1
    assert torch.isfinite(w.log_alpha).all() and float(w.log_alpha[0].detach()) == 0.0


def test_state_dict_resumes_the_same_trajectory():
    def steps(opt, w, which):
        for idx in which:
            torch.manual_seed(int(idx.sum()))
            w.sample(idx).sum().backward()
            opt.step(idx)

    w = bw.BetaWeights(N).double()
    opt = bw.WeightOptimizer("sgd", lr=0.2, momentum=0.9).bind(w)
    steps(opt, w, BATCHES[:2])
    state, weights_state = opt.state_dict(), {k: v.clone() for k, v in w.state_dict().items()}
    steps(opt, w, BATCHES)
    w2 = bw.BetaWeights(N).double()
    w2.load_state_dict(weights_state)
    opt2 = bw.WeightOptimizer("sgd", lr=0.2, momentum=0.9).bind(w2)
    opt2.load_state_dict(state)
    steps(opt2, w2, BATCHES)
    torch.testing.assert_close(w2.log_alpha, w.log_alpha, rtol=0, atol=0)
    assert torch.equal(opt2.visits, opt.visits) and opt2.scale == opt.scale
    with pytest.raises(ValueError, match="same settings"):
        bw.WeightOptimizer("adam").bind(bw.BetaWeights(N)).load_state_dict(state)


def test_bad_settings_and_binding():
    with pytest.raises(ValueError, match="one of"):
        bw.WeightOptimizer("rmsprop")
    for kwargs in ({"lr": 0.0}, {"lr": float("nan")}, {"momentum": 1.0}, {"rms_decay": 1.5}):
        with pytest.raises(ValueError, match="invalid weight optimizer settings"):
            bw.WeightOptimizer(**kwargs)
    with pytest.raises(TypeError, match="learned weights"):
        bw.WeightOptimizer().bind(bw.UniformWeights(3))
    opt = bw.WeightOptimizer().bind(bw.BetaWeights(3))
    with pytest.raises(ValueError, match="already bound"):
        opt.bind(bw.BetaWeights(3))
    with pytest.raises(RuntimeError, match="not bound"):
        bw.WeightOptimizer().step(torch.tensor([0]))
