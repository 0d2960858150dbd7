"""Every weighting method through the one interface: the same loop, the same calls for
pruning and plots, and a checkpoint round trip."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from helpers import label_noise_problem, one_thread  # noqa: F401 (a fixture)
from torch import nn

import betaweighter as bw

pytestmark = pytest.mark.usefixtures("one_thread")

N = 40
X, LABELS, _, TARGET = label_noise_problem(seed=0, n=N)
X = X.double()
TARGET = torch.utils.data.TensorDataset(TARGET.tensors[0].double(), TARGET.tensors[1])

METHODS = {
    "bdw": lambda: bw.BetaWeights(N),
    "dw": lambda: bw.PointWeights(N),
    "rotnet": lambda: bw.UniformWeights(N),
    "l2rw": lambda: bw.L2RW(N),
    "weightnet": lambda: bw.WeightNet(N, hidden=16),
    "nn": lambda: bw.NearestNeighbourWeights(N),
    "loss_hard": lambda: bw.LossHeuristicWeights(N, "hard"),
    "loss_easy": lambda: bw.LossHeuristicWeights(N, "easy"),
    "el2n": lambda: bw.LossHeuristicWeights(N, "el2n"),
    "random": lambda: bw.RandomWeights(N),
    "random_resampled": lambda: bw.RandomWeights(N, resample=True),
}


def _make(name):
    weights = METHODS[name]().double()
    if isinstance(weights, bw.NearestNeighbourWeights):
        weights.fit(X, TARGET)
    return weights


def _loop(weights, steps, model=None, opt=None, meta_state=None, seed=0):
    """The user's loop; nothing in it depends on the method."""
    if model is None:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    learned = isinstance(weights, bw.LearnedWeights)
    meta = bw.MetaWeighter(model, weights, opt, bw.ClassificationLoss(16), target=TARGET,
                           weight_optimizer=bw.WeightOptimizer(lr=0.5) if learned else None)
    if meta_state is not None:
        meta.load_state_dict(meta_state)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(N, generator=g)[:8]
        y = LABELS[idx]
        meta.backward(X[idx], lambda out, y=y: F.cross_entropy(out, y, reduction="none"), idx)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        opt.zero_grad()
    return model, opt, meta


@pytest.mark.parametrize("name", sorted(METHODS))
def test_same_loop_pruning_reads_and_checkpoint_round_trip(name):
    weights = _make(name)
    torch.manual_seed(0)
    before = [p.detach().clone() for p in
              nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double().parameters()]
    model, opt, meta = _loop(weights, steps=4)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))

    # what the pruning scheduler and the plots read, the same for every method
    mean, std, cdf = weights.mean(), weights.std(), weights.cdf(0.1)
    assert mean.shape == std.shape == cdf.shape == (N,)
    assert torch.isfinite(mean).all() and (mean >= 0).all() and (std >= 0).all()
    assert ((cdf >= 0) & (cdf <= 1)).all()
    idx = torch.tensor([3, 1])
    torch.testing.assert_close(weights.mean(idx), mean[idx])

    # checkpoint: the weights through bytes (tensors only: loads with weights_only=True)
    # into a freshly built object; then one more step on each gives the same result
    buf = io.BytesIO()
    torch.save(weights.state_dict(), buf)
    buf.seek(0)
    resumed = METHODS[name]().double()
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(resumed.mean(), mean)
    if name not in ("rotnet", "random", "random_resampled", "nn"):  # state that was learnt
        assert not torch.allclose(METHODS[name]().double().mean(), mean)
    model2 = copy.deepcopy(model)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    meta_state = copy.deepcopy(meta.state_dict())
    _loop(weights, 2, model, opt, meta_state=meta.state_dict(), seed=1)
    _loop(resumed, 2, model2, opt2, meta_state=meta_state, seed=1)
    torch.testing.assert_close(resumed.mean(), weights.mean())
    for p, q in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(p, q)
