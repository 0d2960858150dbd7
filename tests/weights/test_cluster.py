"""ClusterWeights: the meta-gradient reaches the shared logits exactly, the mean weight is
held, re-clustering carries what was learnt, and the state survives a checkpoint."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import images, labelled, tiny_convnet

import betaweighter as bw

N = 12


def _raw():
    return bw.WeightOptimizer("sgd", lr=1.0, normalise=False)


def _blobs(n=60, seed=0):
    """Three well-separated blobs in 2-D (in direction: the features are L2-normalised),
    the first near the labelled target."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[10.0, 10.0], [10.0, -10.0], [-10.0, 10.0]], dtype=torch.float64)
    kind = torch.arange(n) % 3
    x = centres[kind] + 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    target = centres[0] + 0.3 * torch.randn(10, 2, generator=g, dtype=torch.float64)
    return x, kind, torch.utils.data.TensorDataset(target, torch.zeros(10, dtype=torch.long))


def _fitted(clusters=3, **kw):
    kw.setdefault("prior", "none")  # every cluster starts at the mean
    kw.setdefault("offset_scale", 0.0)  # the cluster logits alone
    x, kind, target = _blobs()
    w = bw.ClusterWeights(len(x), clusters=clusters, space="pixel", **kw).double()
    return w.fit(x, target), x, kind, target


def test_clusters_partition_the_pool_by_feature_space_and_share_one_weight():
    w, _, kind, _ = _fitted()
    a = w.assignment
    for k in range(3):  # each blob is one cluster
        assert len(set(a[kind == k].tolist())) == 1
    assert len(set(a.tolist())) == 3
    assert torch.equal(w.cluster_sizes(), torch.bincount(a, minlength=3))
    assert torch.allclose(w.mean(), torch.full((60,), 0.5, dtype=torch.float64))
    assert torch.equal(w.std(), torch.zeros(60))


def test_one_meta_gradient_moves_every_member_of_the_cluster():
    w, _, kind, _ = _fitted()
    opt = _raw().bind(w)
    idx = torch.tensor([0])  # one instance of blob 0
    w.sample(idx).backward(torch.tensor([-1.0], dtype=torch.float64))  # push it up
    opt.step(idx)
    mean = w.mean()
    assert torch.allclose(mean[kind == 0], mean[0].expand(int((kind == 0).sum())))
    assert float(mean[kind == 0][0]) > 0.5 > float(mean[kind == 1][0])
    assert float(mean.mean()) == pytest.approx(0.5, abs=1e-9)  # the mean is held


@pytest.mark.parametrize("init", [0.2, 0.5, 0.9])
def test_projection_holds_the_pool_mean_at_init(init):
    w, *_ = _fitted(clusters=3, init=init, offset_scale=1.0)
    with torch.no_grad():
        w.logit.copy_(torch.tensor([3.0, -7.0, 0.4]))
        w.offset.normal_(generator=torch.Generator().manual_seed(0))
        w.offset[0] = math.nan
    w.project_()
    assert torch.isfinite(w.logit).all() and torch.isfinite(w.offset).all()
    assert float(w.mean().mean()) == pytest.approx(init, abs=1e-9)
    order = w.logit.argsort()
    assert order.tolist() == [1, 2, 0]  # relative order kept


@pytest.mark.parametrize("normalise", [False, True])
def test_meta_gradient_matches_finite_differences_of_real_steps(normalise):
    """d M / d logit_k through the virtual step, against central differences of the meta
    loss after a real optimiser step on a copy of the model, in float64."""
    torch.manual_seed(0)
    model = tiny_convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    pool = images(N, seed=3)
    target = labelled(16, 4, seed=4)
    tx, ty = target.tensors
    for s in range(2):  # momentum buffers exist
        x, y = bw.rotate4(pool[s * 3:(s + 1) * 3])
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()

    def objective(m):
        return F.cross_entropy(m(tx), ty)

    w = bw.ClusterWeights(N, clusters=3, space="pixel", offset_scale=0.5, prior="none").double()
    w.fit(pool, target)
    with torch.no_grad():
        w.logit.copy_(torch.tensor([0.3, -0.4, 0.8]))
        w.offset.copy_(torch.linspace(-1, 1, N))
    idx = torch.tensor([1, 5, 8, 10])
    x, y = bw.rotate4(pool[idx])
    meta = bw.MetaWeighter(model, w, opt, objective, weight_optimizer=_raw(),
                           normalise=normalise)
    before = copy.deepcopy(w)
    meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"), idx)

    def meta_loss(logit, offset):
        z = logit[w.assignment[idx]] + 0.5 * offset[idx]
        w_rows = torch.sigmoid(z).repeat_interleave(4)
        m = copy.deepcopy(model)
        o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        o.load_state_dict(copy.deepcopy(opt.state_dict()))
        o.zero_grad()
        losses = F.cross_entropy(m(x), y, reduction="none")
        loss = ((w_rows * losses).sum() / w_rows.sum() if normalise
                else (w_rows * losses).mean())
        loss.backward()
        o.step()
        return float(objective(m).detach())

    h = 1e-6
    logit0, offset0 = before.logit.detach().clone(), before.offset.detach().clone()
    fd_logit = torch.zeros(3, dtype=torch.float64)
    for k in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[k] = h
        fd_logit[k] = (meta_loss(logit0 + e, offset0) - meta_loss(logit0 - e, offset0)) / (2 * h)
    fd_offset = torch.zeros(N, dtype=torch.float64)
    for i in idx.tolist():
        e = torch.zeros(N, dtype=torch.float64)
        e[i] = h
        fd_offset[i] = (meta_loss(logit0, offset0 + e) - meta_loss(logit0, offset0 - e)) / (2 * h)
    expected = copy.deepcopy(before)  # the raw step, then the same projection
    with torch.no_grad():
        expected.logit.sub_(fd_logit)
        expected.offset.sub_(fd_offset)
    expected.project_()
    assert fd_logit.abs().max() > 1e-6, "degenerate test: the meta-gradient is ~0"
    rel = ((w.logit.detach() - expected.logit.detach()).abs().max()
           / fd_logit.abs().max())
    assert rel < 1e-5, (w.logit, expected.logit)
    assert torch.allclose(w.offset.detach(), expected.offset.detach(), atol=1e-8, rtol=0)


def test_reclustering_carries_each_clusters_logit_to_its_new_members():
    w, x, kind, target = _fitted(clusters=3)
    with torch.no_grad():
        w.logit[w.assignment[kind == 0][0]] = 2.0
    w.project_()
    before = w.mean().clone()
    w._sources = (x.flip(0), target, None)  # the same partition, other numbers likely
    w.recluster()
    assert torch.allclose(w.mean(), before, atol=1e-9)


def test_state_dict_round_trip_restores_clusters_without_refitting():
    w, x, _, target = _fitted(clusters=3, offset_scale=1.0)
    with torch.no_grad():
        w.logit.copy_(torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))
        w.offset.normal_(generator=torch.Generator().manual_seed(1))
    buffer = io.BytesIO()
    torch.save(w.state_dict(), buffer)
    buffer.seek(0)
    fresh = bw.ClusterWeights(60, clusters=3, space="pixel", offset_scale=1.0,
                              prior="none").double()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.fit(x * 0 + 5.0, target)  # degenerate data: a refit would change everything
    assert torch.equal(fresh.mean(), w.mean())
    assert torch.equal(fresh.assignment, w.assignment)


def test_reclustering_is_seeded_and_follows_refresh_every():
    a, x, _, target = _fitted(clusters=5, seed=3, refresh_every=2)
    b, *_ = _fitted(clusters=5, seed=3, refresh_every=2)
    assert torch.equal(a.assignment, b.assignment)
    assert not a.on_epoch_end(1) and a.on_epoch_end(2)


def test_target_prior_starts_clusters_near_the_target_higher():
    w, _, kind, _ = _fitted(clusters=3, prior="target", prior_scale=2.0)
    mean = w.mean()
    near, far = mean[kind == 0].mean(), mean[kind != 0].mean()
    assert float(near) > 0.5 > float(far)
    assert float(mean.mean()) == pytest.approx(0.5, abs=1e-9)


def test_feature_space_uses_the_model_features():
    model = bw.models.conv_net(num_classes=4, width=4, blocks=2).double()
    pool = images(20, seed=1)
    w = bw.ClusterWeights(20, clusters=4).double().fit(pool, labelled(8, 2), model)
    assert len(set(w.assignment.tolist())) == 4
    with pytest.raises(ValueError, match="needs the model"):
        bw.ClusterWeights(20, clusters=4).fit(pool, labelled(8, 2))


def test_a_pool_smaller_than_the_clusters_gets_one_cluster_per_instance():
    x, _, target = _blobs(n=6)
    w = bw.ClusterWeights(6, clusters=64, space="pixel").double().fit(x, target)
    assert len(set(w.assignment.tolist())) == 6
    assert float(w.mean().mean()) == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("kw", [{"clusters": 0}, {"init": 0.0},
                                {"init": 1.0}, {"offset_scale": -1.0}, {"space": "x"},
                                {"prior": "x"}, {"refresh_every": 0}, {"clusters": 2.5}])
def test_bad_arguments_are_refused(kw):
    with pytest.raises(ValueError):
        bw.ClusterWeights(N, **kw)


def test_unfitted_weights_say_how_to_fit():
    with pytest.raises(RuntimeError, match="call fit"):
        bw.ClusterWeights(N, clusters=2).recluster()


def test_with_offsets_the_target_prior_starts_each_instance_from_its_own_distance():
    x, kind, target = _blobs()
    w = bw.ClusterWeights(len(x), clusters=3, space="pixel", offset_scale=0.5,
                          prior="target").double().fit(x, target)
    unit = x / x.norm(dim=1, keepdim=True)
    t = target.tensors[0] / target.tensors[0].norm(dim=1, keepdim=True)
    d = torch.cdist(unit, t).min(dim=1).values
    logits = w.logits()
    near = kind == 0
    # within the target's blob, closer instances start higher (a rank correlation of -1)
    order_d = d[near].argsort()
    assert torch.equal(logits[near][order_d].argsort(descending=True), torch.arange(20))
    assert float(w.mean().mean()) == pytest.approx(0.5, abs=1e-9)
