"""BDW on every pretext: the cost of a meta step per pretext, one JSON line per case.

    python benchmarks/pretexts.py                      # convnet, 32 px, the demo's sizes
    python benchmarks/pretexts.py --model resnet18     # ResNet-18 at 84 px (STL-10's crop)
    python benchmarks/pretexts.py --compare            # plain loop vs BDW + pruning, 3 seeds

MAE needs patches, so it always runs on vit_tiny (32 px, 4 px patches, 4 blocks), whatever
``--model`` says; its row names the model it ran on.

Step ratio. A "plain step" is the user's loop with the pretext as it is: ``pretext.batch``
(augmentation, target network), forward, the mean per-row loss, backward,
``optimizer.step()`` and ``pretext.after_step()`` (EMA, queue). A "meta step" is the same
with ``MetaWeighter.backward`` (BDW weights: the weighted backward, the look-ahead, the
prototypical episode through it, the forward-mode pass, the weight update) in place of the
backward. The two alternate, block by block, in one process on identical models, and the
median over ``--steps`` blocks is reported, so the ratio is robust to a loaded machine.
`views_s` is the median time of ``pretext.batch`` alone (per-image augmentation and the
target network's forward), part of both steps; `ratio_without_views` leaves it out of both.

The comparison of the issue (plain loop against BDW with pruning over 3 seeds: probe
accuracy with 95 % intervals, wall time, weight diagnostics) goes through the
same code as ``betaweighter compare`` (``--compare``, `compare_plain_vs_bdw`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import betaweighter as bw
from betaweighter.models import build_model
from betaweighter.pretext import (
    BYOLPretext,
    MAEPretext,
    MoCoPretext,
    RotationPretext,
    SimCLRPretext,
    SimSiamPretext,
    SwAVPretext,
)

PRETEXTS = {
    "rotation": lambda backbone, size, stats: RotationPretext(backbone),
    "simclr": lambda backbone, size, stats: SimCLRPretext(
        backbone, hidden_dim=128, projection_dim=64, image_size=size, **stats),
    "moco": lambda backbone, size, stats: MoCoPretext(
        backbone, hidden_dim=128, projection_dim=64, queue_size=1024, image_size=size, **stats),
    "byol": lambda backbone, size, stats: BYOLPretext(
        backbone, hidden_dim=128, projection_dim=64, image_size=size, **stats),
    "simsiam": lambda backbone, size, stats: SimSiamPretext(
        backbone, hidden_dim=128, projection_dim=64, predictor_hidden_dim=16, image_size=size,
        **stats),
    "swav": lambda backbone, size, stats: SwAVPretext(
        backbone, hidden_dim=128, projection_dim=64, prototypes=30, queue_size=256,
        image_size=size, **stats),
    "mae": lambda backbone, size, stats: MAEPretext(
        backbone, decoder_dim=128, decoder_layers=2, decoder_heads=4),
}
MODELS = {"convnet": {"size": 32, "kwargs": {"width": 32}},
          "resnet18": {"size": 84, "kwargs": {}},
          "vit_tiny": {"size": 32, "kwargs": {"image_size": 32, "patch_size": 4, "blocks": 4}}}
#: pretexts that need a particular backbone, whatever --model says
BACKBONES = {"mae": "vit_tiny"}
COPIES = {"rotation": 4, "mae": 1}  # rows per pool image (2 for the two-view tasks)


def _setup(pretext: str, model: str, batch: int, episode: tuple[int, int, int],
           device: torch.device, every: int):
    torch.manual_seed(0)
    model = BACKBONES.get(pretext, model)
    size = MODELS[model]["size"]
    stats = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    task = PRETEXTS[pretext](build_model(model, 4, **MODELS[model]["kwargs"]), size, stats)
    task.to(device).train()
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.01,
                          momentum=0.9, weight_decay=1e-4)
    way, shot, query = episode
    per_class = shot + query
    tx = torch.randn(way * per_class, 3, size, size)
    ty = torch.arange(way).repeat_interleave(per_class)
    pool = torch.randn(4 * batch, 3, size, size, device=device)
    weights = bw.BetaWeights(len(pool)).to(device)
    meta = bw.MetaWeighter(task, weights, opt, bw.PrototypicalLoss(way, shot, query),
                           target=torch.utils.data.TensorDataset(tx, ty), every=every)
    return task, opt, pool, meta


def _step(pretext: str, model: str, batch: int, episode: tuple[int, int, int],
          device: torch.device, mode: str, every: int):
    task, opt, pool, meta = _setup(pretext, model, batch, episode, device, every)
    g = torch.Generator().manual_seed(0)
    views_s: list[float] = []

    def step() -> None:
        idx = torch.randperm(len(pool), generator=g)[:batch].to(device)
        t = time.perf_counter()
        b = task.batch(pool[idx])
        _sync(device)
        views_s.append(time.perf_counter() - t)
        if mode == "meta":
            meta.backward(b.inputs, b.loss_fn, idx, copies=b.copies)
        else:
            b.loss_fn(task(b.inputs)).mean().backward()
        opt.step()
        opt.zero_grad()
        task.after_step()

    return step, views_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_pair(pretext: str, model: str, batch: int, episode: tuple[int, int, int],
              device: torch.device, steps: int, every: int) -> dict:
    """Median seconds per call of the plain and the meta step, alternating block by block
    (a block is `every` calls: one meta update's worth of work); also both without the
    time spent in ``pretext.batch`` (the augmentation, which both steps share)."""
    plain, plain_views = _step(pretext, model, batch, episode, device, "plain", every)
    meta, meta_views = _step(pretext, model, batch, episode, device, "meta", every)
    for _ in range(max(2, every)):
        plain()
        meta()
    times: dict[str, list[float]] = {"plain": [], "meta": [], "plain_rest": [], "meta_rest": []}
    views = {"plain": plain_views, "meta": meta_views}
    for _ in range(steps):
        for name, step in (("plain", plain), ("meta", meta)):
            _sync(device)
            start = len(views[name])
            t = time.perf_counter()
            for _ in range(every):
                step()
            _sync(device)
            total = time.perf_counter() - t
            times[name].append(total / every)
            times[f"{name}_rest"].append((total - sum(views[name][start:])) / every)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"plain_step_s": round(med["plain"], 5), "meta_step_s": round(med["meta"], 5),
            "views_s": round(statistics.median(plain_views + meta_views), 5),
            "ratio": round(med["meta"] / med["plain"], 3),
            "ratio_without_views": round(med["meta_rest"] / med["plain_rest"], 3)}


def compare_plain_vs_bdw(pretexts: list[str], seeds: list[int],
                         out: str = "runs") -> list[dict]:
    """For each pretext: the plain loop (``weights.method=rotnet``, no pruning) against BDW
    with CDF pruning (the shipped ``demo`` / ``demo/<pretext>`` configs), each over `seeds`,
    through `betaweighter.experiment.compare`: linear-probe test accuracy (mean and 95 %
    interval), wall time, images seen, time to the plain loop's accuracy, and the weight
    diagnostics (AUROC digits vs patches, in-domain share of the pruned). One dict per
    pretext and variant; the runs stay under `out`."""
    from betaweighter.experiment.compare import compare

    rows = []
    for name in pretexts:
        config = "demo" if name == "rotation" else f"demo/{name}"  # shipped configs
        result = compare(config, seeds=seeds, out=out, variants=("rotnet", "bdw"))
        print(result.format(), file=sys.stderr, flush=True)
        for row in result.table:
            rows.append({"pretext": name, "seeds": seeds, "directory": str(result.directory),
                         **{k: v for k, v in row.items() if k != "label"}})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", choices=sorted(MODELS), default="convnet")
    p.add_argument("--pretext", choices=sorted(PRETEXTS), action="append",
                   help="only these (repeat the flag); default: all")
    p.add_argument("--batch", type=int, default=32, help="pool images per step")
    p.add_argument("--episode", type=int, nargs=3, default=(5, 5, 5),
                   metavar=("WAY", "SHOT", "QUERY"))
    p.add_argument("--every", type=int, default=1, help="a meta update every k-th step")
    p.add_argument("--steps", type=int, default=7, help="timed blocks per case")
    p.add_argument("--compare", action="store_true",
                   help="plain loop vs BDW with pruning on the demo configs, over --seeds")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant with --compare")
    p.add_argument("--out", default="runs", help="where --compare writes its runs")
    args = p.parse_args()
    pretexts = args.pretext or list(PRETEXTS)
    if args.compare:
        for row in compare_plain_vs_bdw(pretexts, list(range(args.seeds)), args.out):
            print(json.dumps(row), flush=True)
        return
    device = torch.device(args.device)
    for name in pretexts:
        copies = COPIES.get(name, 2)
        model = BACKBONES.get(name, args.model)
        row = {"pretext": name, "model": model, "size": MODELS[model]["size"],
               "batch": args.batch, "rows": copies * args.batch, "episode": args.episode,
               "every": args.every, "device": str(device),
               **time_pair(name, args.model, args.batch, tuple(args.episode), device,
                           args.steps, args.every)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
