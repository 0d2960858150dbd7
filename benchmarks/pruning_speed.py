"""Does pruning save wall time in proportion to what it drops?

Trains rotation prediction (a conv net, SGD) for whole epochs through
`PruningScheduler.loader` at kept fractions 1.0, 0.5 and 0.25 (the quantile rule with
q = 0.5, applied zero, one and two times), takes each fraction's fastest of `--repeats`
epochs timed in round robin, and fits epoch time = intercept + slope * kept fraction. With
``linearity = slope / time(1.0)``, 1.0 means time is exactly proportional to the data kept;
the target is >= 0.9 (a fixed per-epoch cost of at most 10%).

Prints exactly one JSON line. Usage::

    python benchmarks/pruning_speed.py [--data demo|synthetic] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

import betaweighter as bw
from betaweighter.models import conv_net
from betaweighter.pruning import PruningScheduler

FRACTIONS = (1.0, 0.5, 0.25)


def build_pool(kind: str, size: int, cache_dir: str | None) -> bw.data.Indexed:
    if kind == "demo":
        return bw.data.demo(cache_dir).pool
    images = torch.randn(size, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return bw.data.Indexed(TensorDataset(images))


def train_epoch(model, optimizer, loader, device: torch.device) -> float:
    """Wall seconds for one epoch of rotation-prediction steps."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for x, _ in loader:
        x, y = bw.rotate4(x.to(device, non_blocking=True))
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("demo", "synthetic"), default="demo")
    parser.add_argument("--size", type=int, default=4096, help="synthetic pool size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16, help="conv net width")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of timed epochs")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    pool = build_pool(args.data, args.size, args.cache_dir)
    weights = bw.PointWeights(len(pool))
    with torch.no_grad():
        weights.value.uniform_(0, 1, generator=torch.Generator().manual_seed(1))
    loaders, kept = [], []
    for steps in range(len(FRACTIONS)):  # one scheduler per fraction: 0, 1, 2 halvings
        pruner = PruningScheduler(weights, rule="quantile", quantile=0.5, seed=0)
        for _ in range(steps):
            pruner.step()
        kept.append(pruner.kept_fraction)
        loaders.append(pruner.loader(pool, batch_size=args.batch_size,
                                     num_workers=args.workers,
                                     pin_memory=device.type == "cuda",
                                     persistent_workers=args.workers > 0))
    model = conv_net(num_classes=4, width=args.width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    train_epoch(model, optimizer, loaders[-1], device)  # warm-up: allocator, kernels, threads
    # Round robin over the fractions, keeping each one's fastest epoch: load from other
    # processes then slows all fractions alike and inflates none of the minima.
    times: list[list[float]] = [[] for _ in FRACTIONS]
    for _ in tqdm(range(args.repeats), desc="rounds", disable=None):
        for k, loader in enumerate(loaders):
            times[k].append(train_epoch(model, optimizer, loader, device))
    seconds = [min(t) for t in times]
    slope, intercept = np.polyfit(kept, seconds, 1)
    print(json.dumps({
        "benchmark": "pruning_speed",
        "data": args.data,
        "pool_size": len(pool),
        "batch_size": args.batch_size,
        "model": f"conv_net(width={args.width}), rotation prediction, SGD",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "workers": args.workers,
        "kept_fraction": [round(k, 4) for k in kept],
        "epoch_seconds": [round(s, 4) for s in seconds],
        "slope_seconds_per_kept_fraction": round(float(slope), 4),
        "intercept_seconds": round(float(intercept), 4),
        "linearity": round(float(slope) / seconds[0], 4),
        "target_linearity": 0.9,
        "meets_target": bool(slope / seconds[0] >= 0.9),
    }))


if __name__ == "__main__":
    main()
