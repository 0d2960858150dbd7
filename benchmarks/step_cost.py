"""Cost of a meta step against a plain weighted step, one JSON line per case.

    python benchmarks/step_cost.py                 # the default cases below
    python benchmarks/step_cost.py --small         # smaller batches (a CPU-friendly run)
    python benchmarks/step_cost.py --device cuda

A "plain step" is the user's ordinary loop: forward, weighted per-sample loss, backward,
optimizer step. A "meta step" is `MetaWeighter.backward` (look-ahead, meta objective on a
labelled episode, weight update) plus the same optimizer step. Times are medians over
`--steps` timed blocks after warm-up, plain and meta alternating in the same process, so
their ratio is robust to a noisy machine. Peak memory: on CUDA the allocator's peak; on
the CPU the peak resident-set growth of a fresh subprocess over two steps after a warm-up
step (sampled every millisecond; includes allocator slack, so only a rough guide).
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

import betaweighter as bw
from betaweighter.models import build_model

METHODS = {
    "bdw": lambda n: bw.BetaWeights(n),
    "dw": lambda n: bw.PointWeights(n),
    "rotnet": lambda n: bw.UniformWeights(n),
    "l2rw": lambda n: bw.L2RW(n),
    "weightnet": lambda n: bw.WeightNet(n),
    "nn": lambda n: bw.NearestNeighbourWeights(n),  # fitted on the pool in _setup
    "loss_hard": lambda n: bw.LossHeuristicWeights(n, "hard"),
    "loss_easy": lambda n: bw.LossHeuristicWeights(n, "easy"),
    "el2n": lambda n: bw.LossHeuristicWeights(n, "el2n"),
    "random": lambda n: bw.RandomWeights(n),
}


def cases(small: bool) -> list[dict]:
    b = 8 if small else 32
    episode = (5, 5, 5) if small else (10, 10, 10)
    base = [
        {"model": "convnet", "size": 32, "batch": b, "episode": episode},
        {"model": "resnet18", "size": 84, "batch": b, "episode": episode},
    ]
    out = []
    for c in base:
        for meta_gradient in ("forward", "finite_difference", "double_backward", "higher"):
            out.append({**c, "method": "bdw", "meta_gradient": meta_gradient, "every": 1})
        for every in (2, 4):
            out.append({**c, "method": "bdw", "meta_gradient": "auto", "every": every})
        for method in METHODS:
            if method != "bdw":
                out.append({**c, "method": method, "meta_gradient": "auto", "every": 1})
    return out


def _setup(case: dict, device: torch.device):
    torch.manual_seed(0)
    model = build_model(case["model"], num_classes=4).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    way, shot, query = case["episode"]
    per_class = shot + query
    tx = torch.randn(way * per_class, 3, case["size"], case["size"])
    ty = torch.arange(way).repeat_interleave(per_class)
    pool = torch.randn(4 * case["batch"], 3, case["size"], case["size"], device=device)
    weights = METHODS[case["method"]](len(pool)).to(device)
    if isinstance(weights, bw.NearestNeighbourWeights):  # one-off, outside the timed steps
        weights.fit(pool, tx)
    meta = bw.MetaWeighter(model, weights, opt, bw.PrototypicalLoss(way, shot, query),
                           target=torch.utils.data.TensorDataset(tx, ty),
                           meta_gradient=case["meta_gradient"], every=case["every"])
    return model, opt, pool, weights, meta


def _steps(case: dict, device: torch.device, mode: str):
    model, opt, pool, weights, meta = _setup(case, device)
    g = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randperm(len(pool), generator=g)[: case["batch"]].to(device)
        x, y = bw.rotate4(pool[idx])
        if mode == "meta":
            meta.backward(x, lambda out: F.cross_entropy(out, y, reduction="none"), idx)
        else:
            w = (weights.sample(idx).detach() if isinstance(weights, bw.LearnedWeights)
                 else torch.ones(len(idx), device=device)).repeat_interleave(4)
            (w * F.cross_entropy(model(x), y, reduction="none")).mean().backward()
        opt.step()
        opt.zero_grad()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_pair(case: dict, device: torch.device, steps: int) -> tuple[float, float]:
    """Median seconds per call of the plain and the meta step. The two alternate, block by
    block, so that both see the same machine load. A block is `every` calls: one meta
    update's worth of work."""
    plain, meta = _steps(case, device, "plain"), _steps(case, device, "meta")
    every = case["every"]
    for _ in range(max(2, every)):
        plain()
        meta()
    times: dict[str, list[float]] = {"plain": [], "meta": []}
    for _ in range(steps):
        for name, step in (("plain", plain), ("meta", meta)):
            _sync(device)
            t = time.perf_counter()
            for _ in range(every):
                step()
            _sync(device)
            times[name].append((time.perf_counter() - t) / every)
    return statistics.median(times["plain"]), statistics.median(times["meta"])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_memory(case: dict, device: torch.device, mode: str) -> float:
    if device.type == "cuda":
        step = _steps(case, device, mode)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(2):
            step()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    out = subprocess.run(
        [sys.executable, __file__, "--memory-probe", json.dumps(case), mode],
        capture_output=True, text=True, check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _memory_probe(case: dict, mode: str) -> None:
    """Peak resident-set growth over two steps, after one warm-up step (kernels, buffers
    and optimiser state allocated), sampled every millisecond by a thread."""
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
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--small", action="store_true", help="batch 8, 5-way 5-shot 5-query")
    p.add_argument("--model", choices=["convnet", "resnet18"], help="only this model")
    p.add_argument("--method", choices=sorted(METHODS), help="only this weighting method")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(torch.get_num_threads())
    for case in cases(args.small):
        if (args.model and case["model"] != args.model) or (
                args.method and case["method"] != args.method):
            continue
        plain, meta = time_pair(case, device, args.steps)
        row = {**case, "device": str(device), "rows": 4 * case["batch"],
               "meta_step_s": round(meta, 5), "plain_step_s": round(plain, 5),
               "ratio": round(meta / plain, 3)}
        if not args.no_memory:
            mem_plain = peak_memory(case, device, "plain")
            mem_meta = peak_memory(case, device, "meta")
            row["peak_memory_ratio"] = round(mem_meta / max(mem_plain, 1.0), 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
