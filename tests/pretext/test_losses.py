"""The per-view losses against their definitions: a hand-computed case, naive loops, and
(where lightly is installed) lightly's batch-mean losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from betaweighter.pretext import (
    byol_loss,
    info_nce_loss,
    interleave,
    negative_cosine,
    nt_xent_loss,
    simsiam_loss,
    swap_views,
)


def test_nt_xent_by_hand():
    # two instances, two identical views each, orthogonal across instances (tau = 1):
    # every anchor has similarity 1 to its positive and 0 to the two negatives
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 1.0]], dtype=torch.float64)
    want = math.log((math.e + 2) / math.e)
    torch.testing.assert_close(nt_xent_loss(z, temperature=1.0),
                               torch.full((4,), want, dtype=torch.float64))


def _naive_nt_xent(z, temperature, copies):
    z = F.normalize(z, dim=1)
    out = []
    for r in range(len(z)):
        others = [k for k in range(len(z)) if k != r]
        denom = sum(math.exp(float(z[r] @ z[k]) / temperature) for k in others)
        group = [k for k in others if k // copies == r // copies]
        out.append(-sum(float(z[r] @ z[p]) / temperature - math.log(denom)
                        for p in group) / len(group))
    return torch.tensor(out, dtype=z.dtype)


@pytest.mark.parametrize("copies,temperature", [(2, 0.5), (2, 0.1), (3, 0.3)])
def test_nt_xent_against_a_naive_loop(copies, temperature):
    z = torch.randn(4 * copies, 5, generator=torch.Generator().manual_seed(copies),
                    dtype=torch.float64)
    torch.testing.assert_close(nt_xent_loss(z, temperature, copies),
                               _naive_nt_xent(z, temperature, copies))


def test_nt_xent_gradients_are_finite_and_flow_through_the_negatives():
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    loss = nt_xent_loss(z)
    (g,) = torch.autograd.grad(loss[0], z)  # row 0's term moves its negatives (rows 2..5)
    assert torch.isfinite(g).all() and g[2:].abs().sum() > 0
    assert torch.autograd.gradcheck(lambda t: nt_xent_loss(t, 0.5), (z,))


def test_info_nce_against_its_definition():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    queue = torch.randn(5, 3, generator=g)
    got = info_nce_loss(q, k, queue, temperature=0.2)
    qn, kn, nn_ = (F.normalize(t, dim=1) for t in (q, k, queue))
    for r in range(4):
        pos = math.exp(float(qn[r] @ kn[r]) / 0.2)
        neg = sum(math.exp(float(qn[r] @ nn_[j]) / 0.2) for j in range(5))
        assert float(got[r]) == pytest.approx(-math.log(pos / (pos + neg)), rel=1e-5)


def test_byol_and_simsiam_against_their_definitions():
    g = torch.Generator().manual_seed(1)
    p, z = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    partner = z[[1, 0, 3, 2, 5, 4]]
    # BYOL: the squared distance of the normalised vectors, 2 - 2 cos
    want = (F.normalize(p, dim=1) - F.normalize(partner, dim=1)).pow(2).sum(1)
    torch.testing.assert_close(byol_loss(p, z), want)
    torch.testing.assert_close(simsiam_loss(p, z), -F.cosine_similarity(p, partner))
    z.requires_grad_()
    simsiam_loss(p.requires_grad_(), z).sum().backward()
    assert z.grad is None and p.grad.abs().sum() > 0  # the target side is stopped


def test_interleave_and_swap_views():
    a, b = torch.arange(3.0), torch.arange(10.0, 13.0)
    assert interleave(a, b).tolist() == [0, 10, 1, 11, 2, 12]
    assert swap_views(interleave(a, b)).tolist() == [10, 0, 11, 1, 12, 2]


def test_a_library_loss_that_averages_adapts_to_one_loss_per_view():
    """lightly's NTXentLoss and NegativeCosineSimilarity average over the batch. The
    NT-Xent one is the mean of ours; its per-view form comes from swapping its reduction,
    in lightly's (view 0 rows, then view 1 rows) order."""
    lightly_loss = pytest.importorskip("lightly.loss")
    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(2))
    ours = nt_xent_loss(z, temperature=0.5)
    loss = lightly_loss.NTXentLoss(temperature=0.5)
    torch.testing.assert_close(loss(z[0::2], z[1::2]), ours.mean())
    loss.cross_entropy = torch.nn.CrossEntropyLoss(reduction="none")
    per_view = loss(z[0::2], z[1::2]).view(2, -1).t().reshape(-1)  # back to interleaved
    torch.testing.assert_close(per_view, ours)
    p = torch.randn(8, 5)
    torch.testing.assert_close(lightly_loss.NegativeCosineSimilarity()(p, z),
                               negative_cosine(p, z).mean())
