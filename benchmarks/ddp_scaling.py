"""Images per second with one process and with N under torchrun, MetaWeighter in the loop.

Each process trains the demo's conv net (or ResNet-18) by rotation prediction with BDW
weights on its shard of random 32 px images (batch `--batch` per process), and rank 0
reports the global images per second over the timed steps. On the CPU the backend is gloo
and each process gets cores / N threads, so the ratio shows the cost of the collectives,
not a speed-up the CPU cannot give; on N GPUs it is the scaling that matters.

    python benchmarks/ddp_scaling.py --procs 1 2
    python benchmarks/ddp_scaling.py --procs 1 2 --model resnet18 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def worker(args: argparse.Namespace) -> None:
    import betaweighter as bw
    from betaweighter.models import build_model

    distributed = bw.runtime.init_distributed()
    size, rank = bw.runtime.world()
    device = bw.runtime.resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=4,
                        **({"width": 32, "blocks": 4} if args.model == "convnet" else {}))
    model.to(device)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    n = 4096
    pool = torch.randn(n, 3, args.size, args.size)
    tx = torch.randn(100, 3, args.size, args.size)
    ty = torch.arange(10).repeat_interleave(10)
    weights = bw.BetaWeights(n).to(device)
    meta = bw.MetaWeighter(model, weights, opt, bw.PrototypicalLoss(5, 5, 5),
                           target=torch.utils.data.TensorDataset(tx, ty), every=args.every)
    g = torch.Generator().manual_seed(rank)

    def step() -> None:
        idx = torch.randint(0, n, (args.batch,), generator=g)
        x, y = bw.rotate4(pool[idx].to(device))
        meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"), idx.to(device))
        opt.step()
        opt.zero_grad()

    for _ in range(3):
        step()
    if distributed:
        torch.distributed.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if distributed:
        torch.distributed.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        print(json.dumps({"processes": size, "device": str(device), "model": args.model,
                          "batch_per_process": args.batch, "every": args.every,
                          "threads_per_process": torch.get_num_threads(),
                          "images_per_s": round(size * args.batch * args.steps / seconds, 2)}),
              flush=True)
    if distributed:
        bw.runtime.finish_distributed()  # last: under gloo it ends the process


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--model", default="convnet", choices=["convnet", "resnet18"])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    cores = os.cpu_count() or 1
    passthrough = ["--model", args.model, "--size", str(args.size), "--batch", str(args.batch),
                   "--every", str(args.every), "--steps", str(args.steps), "--device",
                   args.device, "--worker"]
    results = []
    for procs in args.procs:
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // procs))}
        cmd = ([sys.executable, __file__] if procs == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(procs), __file__])
        out = subprocess.run(cmd + passthrough, env=env, capture_output=True, text=True,
                             check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(row)
        if len(results) > 1:
            row["speedup_vs_1"] = round(row["images_per_s"] / results[0]["images_per_s"], 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
