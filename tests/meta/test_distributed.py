"""MetaWeighter under DistributedDataParallel: two real processes (gloo, CPU).

Each rank sees its own shard of the batch and its own labelled target shard. The meta
direction is averaged over the ranks, the per-instance gradient rows are gathered and
summed, so every rank applies the same weight update. Checked against a single-process
double-backward reference of the same computation: the average over ranks of the meta
objective, at the parameters one SGD step ahead along the DDP-averaged gradient of the
per-shard weighted losses (BatchNorm statistics per shard, as under DDP).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import launch_two_ranks
from torch.func import functional_call

import betaweighter as bw
from betaweighter.meta.virtual_step import VirtualOptimizer

TESTS = Path(__file__).resolve().parents[1]
SHARDS = [[0, 1, 2], [3, 4, 5]]  # pool instances of rank 0 and rank 1
N = 8

WORKER = """
import json, sys
import torch, torch.distributed as dist, torch.nn.functional as F
sys.path.insert(0, sys.argv[3])
from test_distributed import setup, SHARDS
import betaweighter as bw
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
model, opt, pool, targets, weights = setup()
ddp = torch.nn.parallel.DistributedDataParallel(model)
tx, ty = targets[rank]
meta = bw.MetaWeighter(ddp, weights, opt, lambda m: F.cross_entropy(m(tx), ty),
                       weight_optimizer=bw.WeightOptimizer(lr=1.0, normalise=False),
                       meta_gradient=sys.argv[4])
steps = []
for step in range(3):
    idx = torch.tensor(SHARDS[rank]) + 0 if step == 0 else torch.tensor(SHARDS[rank][::-1])
    x, y = bw.rotate4(pool[idx])
    meta.backward(x, lambda out, y=y: F.cross_entropy(out, y, reduction="none"), idx)
    steps.append(weights.value.detach().tolist())
    opt.step()
    opt.zero_grad()
params = torch.cat([p.detach().flatten() for p in model.parameters()])
print(json.dumps({"weights": steps, "params": params.tolist()}), flush=True)
dist.barrier()
import betaweighter.runtime
betaweighter.runtime.finish_distributed()  # gloo: leaves before the teardown
raise SystemExit("finish_distributed returned under gloo")
"""


def setup():
    """Model, optimiser, pool, per-rank targets and weights, identical on every rank."""
    from helpers import images, labelled, tiny_convnet

    model = tiny_convnet(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    pool = images(N, seed=3)
    targets = [labelled(8, 4, seed=10 + r).tensors for r in range(2)]
    return model, opt, pool, targets, bw.PointWeights(N).double()


def _launch(tmp_path: Path, meta_gradient: str) -> list[dict]:
    return launch_two_ranks(WORKER, tmp_path, str(TESTS / "meta"), meta_gradient)


def _reference_first_step() -> torch.Tensor:
    """dM/dw of the averaged objective by double backward in one process."""
    model, opt, pool, targets, _ = setup()
    w = torch.full((N,), 0.5, dtype=torch.float64, requires_grad=True)
    params = dict(model.named_parameters())
    names = list(params)
    grads = None
    for shard in SHARDS:  # DDP averages the per-rank mean losses' gradients
        idx = torch.tensor(shard)
        x, y = bw.rotate4(pool[idx])
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        losses = F.cross_entropy(functional_call(model, (params, buffers), (x,)), y,
                                 reduction="none")
        loss = (w[idx].repeat_interleave(4) * losses).mean() / len(SHARDS)
        g = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        grads = g if grads is None else [a + b for a, b in zip(grads, g)]
    vopt = VirtualOptimizer(opt, params)
    theta, _ = vopt.step(params, dict(zip(names, grads)), vopt.initial_state())
    meta = 0.0
    for tx, ty in targets:
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        out = functional_call(model, (theta, buffers), (tx,))
        meta = meta + F.cross_entropy(out, ty) / len(targets)
    (g_w,) = torch.autograd.grad(meta, w)
    return g_w


@pytest.mark.parametrize("meta_gradient", ["forward", "finite_difference"])
def test_ddp_weights_equal_the_single_process_reference_and_agree_across_ranks(
        tmp_path, meta_gradient):
    outs = _launch(tmp_path, meta_gradient)
    a, b = outs
    assert a["weights"] == b["weights"]  # bitwise, every step
    assert a["params"] == b["params"]
    got = 0.5 - torch.tensor(a["weights"][0], dtype=torch.float64)  # lr 1: minus the gradient
    want = _reference_first_step()
    touched = sorted(i for s in SHARDS for i in s)
    assert want[touched].abs().max() > 1e-8
    assert got[[6, 7]].abs().max() == 0  # instances in no shard never move
    tol = 1e-9 if meta_gradient == "forward" else 1e-5
    torch.testing.assert_close(got[touched], want[touched], rtol=tol, atol=tol * 1e-3)
