"""The shuffled control permutes each batch's meta-gradients across its instances, and
`plain` turns MetaWeighter into an ordinary backward (the budget's training phase)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import images, labelled, tiny_convnet

import betaweighter as bw

N = 16


def _meta(shuffle=False, **kw):
    torch.manual_seed(0)
    model = tiny_convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tx, ty = labelled(16, 4, seed=4).tensors
    weights = bw.PointWeights(N).double()
    meta = bw.MetaWeighter(model, weights, opt, lambda m: F.cross_entropy(m(tx), ty),
                           weight_optimizer=bw.WeightOptimizer("sgd", 1.0, normalise=False),
                           shuffle_meta_gradients=shuffle, **kw)
    return model, opt, weights, meta


def _call(meta, idx):
    x, y = bw.rotate4(images(N, seed=3)[idx])
    return meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"), idx)


def test_shuffled_control_moves_the_weights_by_a_permutation_of_the_real_signal():
    idx = torch.tensor([2, 3, 5, 7, 11, 13])
    _, _, real, meta = _meta()
    _call(meta, idx)
    _, _, shuffled, meta_s = _meta(shuffle=True)
    _call(meta_s, idx)
    a = (0.5 - real.value.detach())[idx]
    b = (0.5 - shuffled.value.detach())[idx]
    assert not torch.allclose(a, b)
    assert torch.allclose(a.sort().values, b.sort().values, atol=1e-12)  # same signals
    perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(b, a[perm], atol=1e-12)  # seeded by the call count


def test_plain_is_an_ordinary_backward_of_the_mean_loss():
    model, opt, weights, meta = _meta()
    meta.plain = True
    idx = torch.tensor([0, 1, 2])
    x, y = bw.rotate4(images(N, seed=3)[idx])
    loss = meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"), idx)
    got = [p.grad.clone() for p in model.parameters()]
    opt.zero_grad()
    reference = F.cross_entropy(model(x), y)
    reference.backward()
    assert float(loss) == pytest.approx(float(reference.detach()))
    assert all(torch.allclose(g, p.grad) for g, p in zip(got, model.parameters()))
    assert torch.equal(weights.value, torch.full((N,), 0.5, dtype=torch.float64))
    assert meta.meta_steps == 0 and meta.episodes == 0 and meta.calls == 1


def test_a_duplicate_index_sums_the_meta_gradients_of_its_occurrences():
    """Instances 3 and 5 hold the same image: the batch [3, 5] gives each the same
    meta-gradient, and the batch [3, 3] moves instance 3 by their sum."""
    pool = images(N, seed=3)
    pool[5] = pool[3]

    def update(idx):
        _, _, weights, meta = _meta()
        x, y = bw.rotate4(pool[idx])
        meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"), idx)
        return 0.5 - weights.value.detach(), meta

    distinct, _ = update(torch.tensor([3, 5]))
    duplicate, meta = update(torch.tensor([3, 3]))
    assert float(distinct[3]) != 0 and torch.allclose(distinct[3], distinct[5])
    assert torch.allclose(duplicate[3], distinct[3] + distinct[5], rtol=1e-9, atol=1e-12)
    assert int(meta.weight_optimizer.visits[3]) == 1


def test_indices_on_the_meta_device_are_refused_in_one_line():
    *_, meta = _meta()
    x, y = bw.rotate4(images(2, seed=3))
    with pytest.raises(ValueError, match="'meta' device"):
        meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"),
                      torch.tensor([0, 1], device="meta"))
