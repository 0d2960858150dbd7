"""Small models and data shared by the tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from betaweighter.models import conv_net


def tiny_convnet(seed: int = 0, dtype: torch.dtype = torch.float64,
                 num_classes: int = 4) -> nn.Module:
    """A 2-block conv net with BatchNorm, small enough for float64 finite differences."""
    torch.manual_seed(seed)
    return conv_net(num_classes=num_classes, width=4, blocks=2).to(dtype)


def images(n: int, seed: int = 0, size: int = 8,
           dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g, dtype=dtype)


def labelled(n: int, classes: int, seed: int = 1, size: int = 8,
             dtype: torch.dtype = torch.float64) -> torch.utils.data.TensorDataset:
    x = images(n, seed, size, dtype)
    y = torch.arange(n) % classes
    return torch.utils.data.TensorDataset(x, y)


def label_noise_problem(seed: int = 0, n: int = 512, classes: int = 4, dim: int = 8):
    """Gaussian blobs where half the pool has flipped labels; clean labelled target data.

    Returns (x, noisy_labels, flipped_mask, target_dataset). A good weighting method
    should give the flipped half lower weights than the clean half.
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 2.0

    def draw(m):
        y = torch.randint(0, classes, (m,), generator=g)
        return centres[y] + torch.randn(m, dim, generator=g), y

    x, y = draw(n)
    tx, ty = draw(200)
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[torch.randperm(n, generator=g)[: n // 2]] = True
    noisy = y.clone()
    shift = torch.randint(1, classes, (int(flipped.sum()),), generator=g)
    noisy[flipped] = (y[flipped] + shift) % classes
    return x, noisy, flipped, torch.utils.data.TensorDataset(tx, ty)


def train_on_label_noise(weights, seed: int = 0, epochs: int = 6, weight_optimizer=None,
                         **meta_kwargs):
    """Supervised training on `label_noise_problem` wrapped with MetaWeighter (meta
    objective: classification on the clean target). Returns (final mean weights, flipped)."""
    import torch.nn.functional as F

    import betaweighter as bw

    x, noisy, flipped, target = label_noise_problem(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    meta = bw.MetaWeighter(model, weights, opt, bw.ClassificationLoss(64, seed=seed),
                           target=target, weight_optimizer=weight_optimizer, **meta_kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 32):
            idx = perm[i:i + 32]
            y = noisy[idx]
            meta.backward(x[idx], lambda out, y=y: F.cross_entropy(out, y, reduction="none"), idx)
            opt.step()
            opt.zero_grad()
    return weights.mean().detach(), flipped


# A tiny demo-set run for the experiment tests (seconds, not minutes). It pins the data,
# the method and the schedule, so that it means the same on top of the shipped `demo`
# config (the mixture pool and the cluster weighting) as on the defaults.
TINY = [
    "data.name=demo", "data.options={}", "weights.method=bdw", "weights.options={}",
    "pruning.score_epochs=null",
    "model.width=8", "model.blocks=2", "meta.way=3", "meta.shot=2", "meta.query=2",
    "train.epochs=2", "train.milestones=[1]", "train.max_steps_per_epoch=3",
    "train.batch_size=16", "evaluate.c_grid=[1.0]", "evaluate.final_c_grid=[1.0]",
    "evaluate.max_iter=200",
    "pruning.enabled=true", "pruning.rule=quantile", "pruning.quantile=0.1",
]


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread: for the tiny models of these tests it is faster
    than two on a shared, loaded machine (17 s against 0.5 s seen for a label-noise run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def launch_two_ranks(worker: str, tmp_path, path: str, *args: str) -> list[dict]:
    """Run the script `worker` as ranks 0 and 1 (argv: rank, a file store for gloo, `path`
    for sys.path, then `args`); return each rank's last stdout line, parsed as JSON."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(worker)
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [path, tests, os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "store"),
                               path, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for r in range(2)]
    try:
        results = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
