"""The batch-coupled losses under DistributedDataParallel: two real processes (gloo, CPU)
against one process on the concatenated batch.

SimCLR's negatives, MoCo's enqueued keys and SwAV's Sinkhorn span both processes
(`pretext.gather_rows`), so each rank's per-row losses are its rows of the single-process
losses, at every step, and the weights after three steps of BDW's meta-gradient (whose
forward-mode and finite-difference passes run the loss again, and gather again) are those
of the single process. BatchNorm is put in eval mode here: its batch statistics are
per process under DDP, a coupling this test is not about.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import images, labelled, launch_two_ranks, tiny_convnet

import betaweighter as bw
from betaweighter.pretext import MoCoPretext, SimCLRPretext, SwAVPretext, nt_xent_loss

HERE = Path(__file__).resolve().parent
N = 8
SHARDS = [([0, 1, 2], [3, 4, 5]), ([6, 1, 7], [2, 0, 5]), ([3, 4, 6], [7, 1, 0])]
CASES = [("simclr", "forward"), ("moco", "forward"), ("swav", "forward"),
         ("simclr", "finite_difference")]
BUILD = {
    "simclr": (SimCLRPretext, {"temperature": 0.5}),
    "moco": (MoCoPretext, {"queue_size": 16, "momentum": 0.9}),
    "swav": (SwAVPretext, {"prototypes": 5, "queue_size": 6}),  # full after one step
}

WORKER = """
import json, sys
import torch, torch.distributed as dist
sys.path.insert(0, sys.argv[3])
from test_distributed_pretexts import CASES, run, uneven_gather
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
out = {f"{name}-{method}": run(name, method, rank) for name, method in CASES}
out["gather"] = uneven_gather(rank)
print(json.dumps(out), flush=True)
dist.barrier()
import betaweighter.runtime
betaweighter.runtime.finish_distributed()
"""


def run(name: str, meta_gradient: str, rank: int | None) -> dict:
    """Three BDW steps (PointWeights, raw SGD on the weights) of pretext `name`: as rank
    `rank` of two under DDP, or (None) alone on both ranks' shards concatenated. Returns
    the per-row losses of each step's training forward and the weights after each step."""
    cls, kw = BUILD[name]
    torch.manual_seed(0)
    pretext = cls(tiny_convnet(), hidden_dim=8, projection_dim=6, **kw).double()
    for m in pretext.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    model = pretext if rank is None else torch.nn.parallel.DistributedDataParallel(pretext)
    opt = torch.optim.SGD([p for p in pretext.parameters() if p.requires_grad], lr=0.1,
                          momentum=0.9, weight_decay=1e-3)
    x, y = labelled(12, 3, seed=4).tensors
    head = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    weights = bw.PointWeights(N).double()
    meta = bw.MetaWeighter(model, weights, opt, lambda m: F.cross_entropy(m.features(x) @ head, y),
                           weight_optimizer=bw.WeightOptimizer(lr=1.0, normalise=False),
                           meta_gradient=meta_gradient)
    pairs = images(2 * N, seed=3).view(N, 2, 3, 8, 8)
    losses, steps = [], []
    for shards in SHARDS:
        idx = torch.tensor(shards[0] + shards[1] if rank is None else shards[rank])
        b = pretext.batch(pairs[idx])
        seen = []

        def loss_fn(out, inner=b.loss_fn, seen=seen):
            rows = inner(out)
            seen.append(rows.detach())
            return rows

        meta.backward(b.inputs, loss_fn, idx, copies=b.copies)
        opt.step()
        opt.zero_grad()
        pretext.after_step()
        losses.append(seen[0].tolist())  # the training forward's
        steps.append(weights.value.detach().tolist())
    return {"losses": losses, "weights": steps}


def uneven_gather(rank: int) -> dict:
    """`gather_rows` on shards of 2 and 3 rows: the gradient of a loss that couples all
    rows, and its tangent, for this rank's rows (against one process, in the test)."""
    from torch.autograd import forward_ad as fwAD

    from betaweighter.pretext import gather_rows

    full, tangent, mix = _coupled()
    mine = slice(0, 2) if rank == 0 else slice(2, 5)
    x = full[mine].clone().requires_grad_()
    gathered, own = gather_rows(x)
    (mix[mine] @ gathered).pow(2).sum().backward()
    with fwAD.dual_level():
        dual, _ = gather_rows(fwAD.make_dual(full[mine], tangent[mine]))
        jvp = fwAD.unpack_dual((mix[mine] @ dual).pow(2).sum(1)).tangent
    return {"own": [own.start, own.stop], "grad": x.grad.tolist(), "jvp": jvp.tolist()}


def _coupled():
    g = torch.Generator().manual_seed(2)
    return (torch.randn(5, 3, generator=g, dtype=torch.float64),
            torch.randn(5, 3, generator=g, dtype=torch.float64),
            torch.randn(5, 5, generator=g, dtype=torch.float64))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return launch_two_ranks(WORKER, tmp_path_factory.mktemp("ddp"), str(HERE))


@pytest.mark.parametrize("name,meta_gradient", CASES)
def test_two_processes_equal_one_on_the_concatenated_batch(ranks, name, meta_gradient):
    a, b = (r[f"{name}-{meta_gradient}"] for r in ranks)
    assert a["weights"] == b["weights"]  # bitwise the same on both ranks, every step
    want = run(name, meta_gradient, None)
    for step in range(len(SHARDS)):  # rank 0's rows, then rank 1's: the single process's
        got = torch.tensor(a["losses"][step] + b["losses"][step], dtype=torch.float64)
        torch.testing.assert_close(got, torch.tensor(want["losses"][step], dtype=torch.float64),
                                   rtol=1e-10, atol=1e-12)
    w, w0 = torch.tensor(a["weights"][-1]), torch.tensor(want["weights"][-1])
    assert (w0 - 0.5).abs().max() > 1e-6  # the weights moved
    tol = 1e-9 if meta_gradient == "forward" else 1e-6
    torch.testing.assert_close(w, w0, rtol=tol, atol=tol * 1e-2)


def test_without_the_gather_a_shard_would_see_other_negatives():
    """The reference is discriminating: NT-Xent on one shard alone is not the global one."""
    z = torch.randn(12, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (nt_xent_loss(z[:6]) - nt_xent_loss(z)[:6]).abs().max() > 1e-3


def test_gather_rows_on_uneven_shards_is_differentiable_both_ways(ranks):
    full, tangent, mix = _coupled()
    leaf = full.clone().requires_grad_()
    (mix @ leaf).pow(2).sum().backward()  # every rank's loss together, in one process
    _, jvp = torch.func.jvp(lambda t: (mix @ t).pow(2).sum(1), (full,), (tangent,))
    for rank, mine in ((0, slice(0, 2)), (1, slice(2, 5))):
        got = ranks[rank]["gather"]
        assert got["own"] == [mine.start, mine.stop]
        torch.testing.assert_close(torch.tensor(got["grad"], dtype=torch.float64),
                                   leaf.grad[mine])
        torch.testing.assert_close(torch.tensor(got["jvp"], dtype=torch.float64), jvp[mine])
