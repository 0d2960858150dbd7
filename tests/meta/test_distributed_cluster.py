"""The default weighting under DistributedDataParallel (two gloo processes): cluster
weights, the normalised loss, the running direction with one-sided differences and the
shuffled control keep the weights bitwise identical on both ranks, re-clustering included
(rank 0's clusters win even when the ranks would cluster differently)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import launch_two_ranks

TESTS = Path(__file__).resolve().parents[1]

WORKER = """
import json, sys
import torch, torch.distributed as dist, torch.nn.functional as F
sys.path.insert(0, sys.argv[3])
from helpers import images, labelled, tiny_convnet
import betaweighter as bw
rank, shuffle = int(sys.argv[1]), sys.argv[4] == "shuffle"
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
model = tiny_convnet(seed=0)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
pool = images(12, seed=3)
tx, ty = labelled(8, 4, seed=10 + rank).tensors
# a different k-means seed per rank: only rank 0's clusters may be used
weights = bw.ClusterWeights(12, clusters=3, offset_scale=0.5, prior="target",
                            seed=rank).double().fit(pool, labelled(8, 4, seed=10), model)
ddp = torch.nn.parallel.DistributedDataParallel(model)
meta = bw.MetaWeighter(ddp, weights, opt, lambda m: F.cross_entropy(m(tx), ty),
                       normalise=True, direction="running", every=2,
                       meta_gradient="one_sided", shuffle_meta_gradients=shuffle)
states = []
for step in range(3):
    idx = torch.arange(3 * rank, 3 * rank + 3) + 6 * (step % 2)
    x, y = bw.rotate4(pool[idx])
    meta.backward(x, lambda out, y=y: F.cross_entropy(out, y, reduction="none"), idx)
    opt.step()
    opt.zero_grad()
    states.append(weights.mean().tolist())
weights.on_epoch_end(1, model)
states.append(weights.mean().tolist())
print(json.dumps({"weights": states, "assignment": weights.assignment.tolist()}), flush=True)
dist.barrier()
import betaweighter.runtime
betaweighter.runtime.finish_distributed()
raise SystemExit("finish_distributed returned under gloo")
"""


@pytest.mark.parametrize("mode", ["real", "shuffle"])
def test_cluster_weights_are_bitwise_identical_across_ranks(tmp_path, mode):
    a, b = launch_two_ranks(WORKER, tmp_path, str(TESTS), mode)
    assert a == b  # bitwise: every step, and the clusters after re-clustering
    first, last = a["weights"][0], a["weights"][-2]
    assert first != [0.5] * 12 and last != first  # the weights did move
