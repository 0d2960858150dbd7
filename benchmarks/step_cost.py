"""Cost of MetaWeighter's step against a plain weighted step, one JSON line per case.

    python benchmarks/step_cost.py                  # CPU-sized cases (batch 8, 5-5-5 episode)
    python benchmarks/step_cost.py --paper          # the paper's shapes: ResNet-18 at 84 px,
                                                    # 32 images x 4 rotations, 10-10-10 episode
    python benchmarks/step_cost.py --paper --device cuda --precisions fp32 bf16
    python benchmarks/step_cost.py --methods        # every weighting method, conv net
    python benchmarks/step_cost.py --default        # the default weighting's cases only

A "plain step" is the user's ordinary loop: forward, weighted per-sample loss, backward,
optimizer step. A "meta step" is `MetaWeighter.backward` plus the same optimizer step. Both
run in the same process, alternating block by block (a block is `every` calls), so their
ratio is robust to a busy machine. With ``every > 1`` the calls that run no episode are
also timed on their own ("between"), against the plain step. Reported per case: seconds per
call, the ratio, images per second, and peak memory (on CUDA the allocator's peak; on the
CPU the resident-set growth of a fresh subprocess over two steps, a rough guide only).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import betaweighter as bw
from betaweighter.models import build_model


class DropoutNet(nn.Module):
    """A backbone with Dropout before its head: the forward draws random masks."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.body = build_model(name, num_classes=4, **({"width": 32, "blocks": 4}
                                                        if name == "convnet" else {}))
        self.drop = nn.Dropout(0.2)

    def features(self, x):
        return self.body.features(x)

    def forward(self, x):
        return self.body.head(self.drop(self.body.features(x)))


METHODS = {  # --methods: every weighting method on the conv net, against a RotNet step
    "rotnet": lambda n: bw.UniformWeights(n),
    "bdw": lambda n: bw.BetaWeights(n),
    "dw": lambda n: bw.PointWeights(n),
    "l2rw": lambda n: bw.L2RW(n),
    "weightnet": lambda n: bw.WeightNet(n),
    "nn": lambda n: bw.NearestNeighbourWeights(n),
    "keep-hard": lambda n: bw.LossHeuristicWeights(n, "hard"),
    "keep-easy": lambda n: bw.LossHeuristicWeights(n, "easy"),
    "el2n": lambda n: bw.LossHeuristicWeights(n, "el2n"),
    "random": lambda n: bw.RandomWeights(n, resample=True),
    "cluster": lambda n: bw.ClusterWeights(n, clusters=8, space="pixel"),
}


def method_cases() -> list[dict]:
    base = {"model": "convnet", "size": 32, "batch": 8, "episode": (5, 5, 5),
            "optimizer": "sgd", "dropout": False, "precision": "fp32",
            "meta_gradient": "forward", "every": 1, "direction": "fresh"}
    return [{**base, "method": name} for name in METHODS]


def default_cases(paper: bool) -> list[dict]:
    """The default weighting (cluster weights, normalised loss, running direction, an
    episode every 4 steps) with each meta-gradient, and the budget's plain phase."""
    out = []
    for base in _bases(paper):
        base = {**base, "method": "cluster", "normalise": True, "every": 4,
                "direction": "running"}
        for method in ("forward", "one_sided"):
            out.append({**base, "meta_gradient": method})
        out.append({**base, "meta_gradient": "one_sided", "plain": True})
    return out


def _bases(paper: bool) -> list[dict]:
    """One base case per model: the paper's shapes, or the CPU-sized ones."""
    b, episode = (32, (10, 10, 10)) if paper else (8, (5, 5, 5))
    models = [("resnet18", 84)] if paper else [("convnet", 32), ("resnet18", 84)]
    return [{"model": model, "size": size, "batch": b, "episode": episode,
             "optimizer": "sgd", "dropout": False, "precision": "fp32",
             "meta_gradient": "forward", "every": 1, "direction": "fresh"}
            for model, size in models]


def cases(paper: bool, precisions: list[str]) -> list[dict]:
    out = []
    for base in _bases(paper):
        for precision in precisions:
            for every in (1, 4):
                out.append({**base, "precision": precision, "every": every})
            out.append({**base, "precision": precision, "every": 4, "direction": "running"})
        out.append({**base, "every": 4, "direction": "running", "meta_gradient": "one_sided"})
        out.append({**base, "meta_gradient": "finite_difference"})
        out.append({**base, "meta_gradient": "double_backward"})
        out.append({**base, "optimizer": "adam"})
        out.append({**base, "optimizer": "adam", "meta_gradient": "double_backward"})
        out.append({**base, "dropout": True})
    return out


def _setup(case: dict, device: torch.device):
    torch.manual_seed(0)
    model = (DropoutNet(case["model"]) if case["dropout"]
             else build_model(case["model"], num_classes=4,
                              **({"width": 32, "blocks": 4} if case["model"] == "convnet"
                                 else {}))).to(device)
    if case["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    way, shot, query = case["episode"]
    per_class = shot + query
    tx = torch.randn(way * per_class, 3, case["size"], case["size"])
    ty = torch.arange(way).repeat_interleave(per_class)
    pool = torch.randn(4 * case["batch"], 3, case["size"], case["size"], device=device)
    weights = METHODS[case.get("method", "bdw")](len(pool)).to(device)
    if isinstance(weights, (bw.NearestNeighbourWeights, bw.ClusterWeights)):
        weights.fit(pool.cpu(), torch.utils.data.TensorDataset(tx, ty))
    meta = bw.MetaWeighter(model, weights, opt, bw.PrototypicalLoss(way, shot, query),
                           target=torch.utils.data.TensorDataset(tx, ty),
                           meta_gradient=case["meta_gradient"], every=case["every"],
                           direction=case["direction"], precision=case["precision"],
                           normalise=case.get("normalise", False))
    meta.plain = case.get("plain", False)  # the budget's training phase
    return model, opt, pool, weights, meta


def _steps(case: dict, device: torch.device, mode: str):
    model, opt, pool, weights, meta = _setup(case, device)
    g = torch.Generator().manual_seed(0)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[case["precision"]]

    def step():
        idx = torch.randperm(len(pool), generator=g)[: case["batch"]].to(device)
        x, y = bw.rotate4(pool[idx])
        if mode == "meta":
            meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"), idx)
        else:
            if case.get("method", "bdw") == "bdw":
                w = weights.sample(idx).detach().repeat_interleave(4)
            else:  # the methods' common reference: a RotNet step
                w = torch.ones(4 * len(idx), device=device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = model(x)
            (w * F.cross_entropy(out.float(), y, reduction="none")).mean().backward()
        opt.step()
        opt.zero_grad()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_case(case: dict, device: torch.device, blocks: int) -> dict[str, float]:
    """Median seconds per call: plain, meta (all calls), and, with every > 1, the meta
    step's episode call and the calls between (no episode)."""
    plain, meta = _steps(case, device, "plain"), _steps(case, device, "meta")
    every = case["every"]
    for _ in range(max(2, every)):
        plain()
        meta()
    times: dict[str, list[float]] = {"plain": [], "meta": [], "episode": [], "between": []}
    for _ in range(blocks):
        _sync(device)
        t = time.perf_counter()
        for _ in range(every):
            plain()
        _sync(device)
        times["plain"].append((time.perf_counter() - t) / every)
        calls = []
        for _ in range(every):
            _sync(device)
            t = time.perf_counter()
            meta()
            _sync(device)
            calls.append(time.perf_counter() - t)
        times["meta"].append(sum(calls) / every)
        times["episode"].append(calls[0])
        if every > 1:
            times["between"].append(statistics.mean(calls[1:]))
    return {k: statistics.median(v) for k, v in times.items() if v}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_memory(case: dict, device: torch.device, mode: str) -> float:
    if device.type == "cuda":
        step = _steps(case, device, mode)
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(2):
            step()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    out = subprocess.run([sys.executable, __file__, "--memory-probe", json.dumps(case), mode],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _memory_probe(case: dict, mode: str) -> None:
    import threading

    step = _steps(case, torch.device("cpu"), mode)
    step()
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    for _ in range(2):
        step()
    done.set()
    thread.join()
    print(max(0, peak[0] - base))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-probe":
        case = json.loads(sys.argv[2])
        case["episode"] = tuple(case["episode"])
        _memory_probe(case, sys.argv[3])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--paper", action="store_true", help="the paper's shapes (see above)")
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--blocks", type=int, default=5, help="timed blocks per case")
    p.add_argument("--model", choices=["convnet", "resnet18"], help="only this model")
    p.add_argument("--memory", action="store_true", help="also measure peak memory")
    p.add_argument("--methods", action="store_true",
                   help="every weighting method on the conv net, against a RotNet step")
    p.add_argument("--default", action="store_true",
                   help="the default weighting's cases (cluster weights, running direction)")
    args = p.parse_args()
    device = torch.device(args.device)
    chosen = (method_cases() if args.methods else default_cases(args.paper) if args.default
              else cases(args.paper, args.precisions))
    for case in chosen:
        if args.model and case["model"] != args.model:
            continue
        t = time_case(case, device, args.blocks)
        row = {**case, "device": str(device), "plain_step_s": round(t["plain"], 5),
               "meta_step_s": round(t["meta"], 5), "ratio": round(t["meta"] / t["plain"], 3),
               "plain_images_per_s": round(case["batch"] / t["plain"], 1),
               "meta_images_per_s": round(case["batch"] / t["meta"], 1)}
        if "between" in t:
            row["between_ratio"] = round(t["between"] / t["plain"], 3)
            row["episode_call_ratio"] = round(t["episode"] / t["plain"], 3)
        if args.memory:
            plain_mem, meta_mem = (peak_memory(case, device, m) for m in ("plain", "meta"))
            row["plain_peak_mb"] = round(plain_mem / 2**20, 1)
            row["meta_peak_mb"] = round(meta_mem / 2**20, 1)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
