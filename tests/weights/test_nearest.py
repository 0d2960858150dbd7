"""NN-Weighter: w_i = exp(-k d_i), d_i the distance to the nearest labelled target image."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import one_thread, tiny_convnet  # noqa: F401 (a fixture)
from torch.utils.data import TensorDataset

import betaweighter as bw

pytestmark = pytest.mark.usefixtures("one_thread")


def _pool_and_target():
    """Target images far apart; pool = copies of target 0 moved away along a direction,
    by growing steps (its nearest target stays target 0), plus an exact copy of target 2."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64) * 10
    direction = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    direction /= direction.norm()
    steps = torch.tensor([0.0, 0.1, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    pool = torch.cat([target[0] + steps.view(-1, 1, 1, 1) * direction, target[2:3]])
    return pool, target, torch.cat([steps, torch.zeros(1, dtype=torch.float64)])


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_exact_copy_gets_weight_one_and_weight_decays_with_distance(backend):
    pool, target, dist = _pool_and_target()
    w = bw.NearestNeighbourWeights(len(pool), backend=backend, chunk_size=2).double()
    w.fit(pool, TensorDataset(target, torch.arange(5)))
    torch.testing.assert_close(w.distance, dist, rtol=1e-12, atol=1e-12)
    k = 1.0 / float(dist.median())
    torch.testing.assert_close(float(w.k), k)
    weights = w.mean()
    torch.testing.assert_close(weights, torch.exp(-k * dist))
    assert weights[0] == 1.0 and weights[-1] == 1.0
    assert (weights[:6].diff() < 0).all()
    torch.testing.assert_close(w.weights(torch.tensor([3, 0])), weights[[3, 0]])
    torch.testing.assert_close(w.std(), torch.zeros_like(weights))


def test_fixed_k_chunks_and_dataset_inputs_agree():
    pool, target, dist = _pool_and_target()
    a = bw.NearestNeighbourWeights(len(pool), k=0.3, chunk_size=1).double().fit(pool, target)
    b = bw.NearestNeighbourWeights(len(pool), k=0.3, chunk_size=1000).double()
    b.fit(bw.data.Indexed(TensorDataset(pool)), TensorDataset(target, torch.zeros(5)))
    torch.testing.assert_close(a.mean(), torch.exp(-0.3 * dist))
    torch.testing.assert_close(a.mean(), b.mean())


def test_feature_space_uses_the_model_without_changing_it_and_refreshes():
    torch.manual_seed(0)
    model = tiny_convnet()
    pool, target, _ = _pool_and_target()
    pool, target = pool.repeat(1, 1, 2, 2), target.repeat(1, 1, 2, 2)  # 8x8 images
    w = bw.NearestNeighbourWeights(len(pool), space="feature", refresh_every=2).double()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    w.fit(pool, target, model=model)
    assert model.training
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n  # eval mode: no BatchNorm statistics updated
    model.eval()
    with torch.no_grad():
        feats, tfeats = model.features(pool), model.features(target)
    model.train()
    expected = torch.cdist(feats, tfeats).min(1).values
    torch.testing.assert_close(w.distance, expected)
    # copies are copies in any space (up to the rounding of batched convolutions)
    torch.testing.assert_close(w.mean()[[0, -1]], torch.ones(2, dtype=torch.float64))
    first = w.distance.clone()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    assert w.on_epoch_end() is False and torch.equal(w.distance, first)
    assert w.on_epoch_end() is True and not torch.allclose(w.distance, first)
    # the trainer's call: epochs finished and the model to use from now on
    other = tiny_convnet(seed=5)
    assert w.on_epoch_end(3, other) is False
    assert w.on_epoch_end(4, other) is True
    other.eval()
    with torch.no_grad():
        expected = torch.cdist(other.features(pool), other.features(target)).min(1).values
    torch.testing.assert_close(w.distance, expected)


def test_state_dict_restores_without_refitting():
    pool, target, _ = _pool_and_target()
    w = bw.NearestNeighbourWeights(len(pool)).double().fit(pool, target)
    fresh = bw.NearestNeighbourWeights(len(pool)).double()
    fresh.load_state_dict(w.state_dict())
    torch.testing.assert_close(fresh.mean(), w.mean())


def test_clear_errors():
    pool, target, _ = _pool_and_target()
    w = bw.NearestNeighbourWeights(len(pool))
    with pytest.raises(RuntimeError, match=r"fit\(pool, target\)"):
        w.weights(torch.tensor([0]))
    with pytest.raises(ValueError, match="7 instances"):
        bw.NearestNeighbourWeights(7).fit(pool[:3], target)
    with pytest.raises(ValueError, match="model=model"):
        bw.NearestNeighbourWeights(len(pool), space="feature").fit(pool, target)
    for bad in ({"space": "latent"}, {"backend": "nmslib"}, {"k": -1.0}, {"k": math.inf},
                {"refresh_every": 0}):
        with pytest.raises(ValueError):
            bw.NearestNeighbourWeights(3, **bad)
