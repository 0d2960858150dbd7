"""Does the data pipeline keep the model busy? STL-10-shaped data through the real loader.

Random uint8 images of STL-10's real size (3 x 96 x 96) are written to disk in STL-10's
binary layout (`--images` unlabelled images, plus labelled splits for the meta objective),
and read back by `betaweighter.data.stl10` with its training transform (resize 96, random
crop 84, flip). For each worker count it reports, one JSON line each:

* ``loader``: images per second of the loader alone (decode, transform, collate, pin);
* ``rotnet`` and ``bdw``: images per second of training steps (ResNet-18 at 84 px,
  batches of 32 x 4 rotations; BDW with a 10-way 10-shot 10-query episode), with the batches
  coming from that loader, and the share of the step spent waiting for data.

The episode is drawn from the labelled split by the objective itself, one episode ahead in
a background thread (`prefetch=True`, as the trainer does), so it stays off the critical path.

    python benchmarks/throughput.py --device cuda --workers 0 2 4 8
    python benchmarks/throughput.py --images 2048 --steps 20      # a CPU-sized run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import betaweighter as bw
from betaweighter.models import build_model


def write_stl10_layout(root: Path, images: int, labelled: int = 500, seed: int = 0) -> Path:
    """``root/stl10_binary`` with random images in STL-10's binary layout."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("unlabeled", images), ("train", labelled), ("test", labelled)):
        with open(folder / f"{split}_X.bin", "wb") as f:
            for start in range(0, n, 4096):
                k = min(4096, n - start)
                f.write(rng.integers(0, 256, (k, 3, 96, 96), dtype=np.uint8).tobytes())
        if split != "unlabeled":
            (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    return root


def _loader(data, workers: int, batch: int, device: torch.device):
    return torch.utils.data.DataLoader(
        data.pool, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_loader(loader, steps: int) -> float:
    it = iter(loader)
    next(it)  # workers started
    start = time.perf_counter()
    n = 0
    for _ in range(steps):
        x, _ = next(it)
        n += len(x)
    return n / (time.perf_counter() - start)


def measure_training(data, loader, method: str, steps: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    weights = (bw.BetaWeights if method == "bdw" else bw.UniformWeights)(len(data.pool)).to(device)
    objective = bw.PrototypicalLoss(10, 10, 10, prefetch=True) if method == "bdw" else None
    meta = bw.MetaWeighter(model, weights, opt, objective,
                           target=data.target_train if method == "bdw" else None)
    it = iter(loader)
    for _ in range(2):  # warm-up
        x, idx = next(it)
        _step(meta, opt, x, idx, device)
    _sync(device)
    waiting, start, n = 0.0, time.perf_counter(), 0
    for _ in range(steps):
        t = time.perf_counter()
        x, idx = next(it)
        waiting += time.perf_counter() - t
        _step(meta, opt, x, idx, device)
        n += len(x)
    _sync(device)
    total = time.perf_counter() - start
    return {"images_per_s": round(n / total, 1), "waiting_share": round(waiting / total, 3)}


def _step(meta, opt, x, idx, device) -> None:
    x = x.to(device, non_blocking=True)
    inputs, labels = bw.rotate4(x)
    meta.backward(inputs, lambda out: F.cross_entropy(out, labels, reduction="none"), idx)
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=100_000, help="unlabelled images on disk")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4, 8])
    p.add_argument("--steps", type=int, default=50, help="timed batches per measurement")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--root", help="where to write the data (default: a temporary folder)")
    args = p.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_stl10_layout(Path(args.root or tmp), args.images)
        data = bw.data.stl10(root, val_train_per_class=25, val_test_per_class=25,
                             cache_dir=Path(tmp) / "cache", stats_items=256)
        for workers in args.workers:
            loader = _loader(data, workers, args.batch, device)
            row = {"device": str(device), "images_on_disk": args.images, "workers": workers,
                   "loader_images_per_s": round(measure_loader(loader, args.steps), 1)}
            for method in ("rotnet", "bdw"):
                result = measure_training(data, loader, method, args.steps, device)
                row[f"{method}_images_per_s"] = result["images_per_s"]
                row[f"{method}_waiting_share"] = result["waiting_share"]
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
