"""Do augmentation presets give rotation models different invariances, and does fusing
them transfer to tasks that want opposite ones? (Ericsson, Gouk and Hospedales, "Why Do
Self-Supervised Models Transfer?", arXiv:2111.11398.)

For each data set (`invariance_data`: the demo set and the textured digits built from
scikit-learn's data), pre-trains conv nets by rotation prediction:

* RotNet with the ``default`` (nothing added), ``spatial`` (crop + flip) and
  ``appearance`` (colour + grayscale + blur) presets of `betaweighter.pretext.Augment`;
* BDW (Beta weights judged by 5-way prototypical episodes of the first task) with the
  default preset;
* a RotNet of 3x the width with the default preset: the control of equal total width;

then fuses the three RotNet presets (`betaweighter.evaluate.fuse`, concatenation) and, for
every model, measures the invariance table (v2 protocol, pool images, statistics from
1,000 pool images) and the linear-probe test accuracy on the data set's two tasks (the
45-value C grid, shifted for the fusion as in the paper).

Prints one JSON line per (data set, model) and one ``"summary"`` line per data set with
the three expectations of the paper checked: each preset most invariant to its own
augmentations; no single preset best on both tasks; the fusion within 1 point of the best
member on each task. Writes the tables (CSV) and plots under ``--out``. Usage::

    python benchmarks/invariance.py [--epochs 12] [--datasets demo textured_digits]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from invariance_data import DATASETS, BenchData
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

import betaweighter as bw
from betaweighter.evaluate import fuse, linear_probe, measure_invariance
from betaweighter.experiment.invariance_plots import plot_invariance
from betaweighter.models import conv_net

#: name -> (preset, method, width multiplier)
MODELS = {
    "rotnet-default": ("default", "rotnet", 1),
    "rotnet-spatial": ("spatial", "rotnet", 1),
    "rotnet-appearance": ("appearance", "rotnet", 1),
    "bdw-default": ("default", "bdw", 1),
    "rotnet-default-wide": ("default", "rotnet", 3),
}
MEMBERS = ("rotnet-default", "rotnet-spatial", "rotnet-appearance")
OWN = {"spatial": ("resized_crop", "h_flip", "scale", "translation"),
       "appearance": ("brightness", "contrast", "saturation", "hue", "grayscale", "blur")}


def pretrain(data: BenchData, preset: str, method: str, width: int, epochs: int,
             seed: int) -> tuple[torch.nn.Module, float]:
    """Rotation prediction with the library's parts; returns (backbone, seconds)."""
    torch.manual_seed(seed)
    backbone = conv_net(num_classes=4, width=width, blocks=4)
    pretext = bw.RotationPretext(backbone)
    optimizer = torch.optim.SGD(pretext.parameters(), lr=0.05, momentum=0.9,
                                weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    pool = bw.data.Indexed(TensorDataset(data.normalised(data.pool)))
    if method == "bdw":
        weights = bw.BetaWeights(len(pool))
        target = TensorDataset(data.normalised(data.target[0]),
                               torch.as_tensor(data.target[1]))
        meta = bw.MetaWeighter(pretext, weights, optimizer, bw.PrototypicalLoss(5, 5, 5,
                                                                                seed=seed),
                               target=target, every=2,
                               weight_optimizer=bw.WeightOptimizer("sgd", 50.0, momentum=0.9))
    else:
        meta = bw.MetaWeighter(pretext, bw.UniformWeights(len(pool)), optimizer)
    augment = bw.pretext.Augment(preset, data.mean, data.std)
    loader = DataLoader(pool, batch_size=64, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    pretext.train()
    for _ in tqdm(range(epochs), desc=f"{method}-{preset} x{width}", leave=False):
        for x, idx in loader:
            b = pretext.batch(augment(x))
            meta.backward(b.inputs, b.loss_fn, idx, copies=b.copies)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        schedule.step()
    backbone.eval()
    backbone.data_config = {"image_size": 32, "mean": list(data.mean), "std": list(data.std)}
    return backbone, time.perf_counter() - start


def evaluate(data: BenchData, model: torch.nn.Module, args: argparse.Namespace,
             images: torch.Tensor, reference: torch.Tensor) -> tuple[dict, object]:
    table = measure_invariance(model, images, k=args.k, num_images=len(images),
                               reference=reference, seed=args.seed, protocol=args.protocol,
                               batch_size=256, device="cpu")
    accuracy = {}
    for task in data.tasks:
        out = linear_probe(model, data.split(task, "train"), data.split(task, "val"),
                           data.split(task, "test"), batch_size=256, device="cpu")
        accuracy[task] = round(100 * out["top1"], 2)
    return accuracy, table


def _own_margin(invariance: dict[str, dict[str, float]], preset: str) -> dict[str, float]:
    """Mean similarity over the preset's own transforms, for each preset model."""
    return {m: round(float(np.mean([invariance[m][t] for t in OWN[preset]])), 3)
            for m in MEMBERS}


def run(name: str, args: argparse.Namespace) -> dict:
    data = DATASETS[name](seed=args.seed)
    width = args.width
    models, seconds = {}, {}
    for model_name, (preset, method, mult) in MODELS.items():
        models[model_name], seconds[model_name] = pretrain(data, preset, method, width * mult,
                                                          args.epochs, args.seed)
    models["fused"] = fuse([models[m] for m in MEMBERS])
    seconds["fused"] = sum(seconds[m] for m in MEMBERS)
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(data.pool), generator=g)
    images, reference = data.pool[order[:args.num_images]], data.pool[order[:1000]]
    out = Path(args.out) / name
    rows, tables = {}, {}
    for model_name, model in models.items():
        accuracy, table = evaluate(data, model, args, images, reference)
        tables[model_name] = table
        table.to_csv(out / f"{model_name}.csv")
        summary = {r["transform"]: round(r["similarity"], 3) for r in table.summary()}
        rows[model_name] = {"accuracy": accuracy, "invariance": summary}
        print(json.dumps({"dataset": name, "model": model_name,
                          "feature_dim": int(model.feature_dim), "epochs": args.epochs,
                          "train_seconds": round(seconds[model_name], 1), "accuracy": accuracy,
                          "invariance": summary}), flush=True)
    plot_invariance({m: tables[m] for m in (*MEMBERS, "bdw-default", "fused")},
                    out / "invariance_bar.png", "bar", title=f"{name}: invariance (v2)")
    plot_invariance({m: tables[m] for m in MEMBERS}, out / "invariance_curves.png", "curve",
                    title=f"{name}: invariance curves (v2)")
    return summarise(name, rows, data)


def summarise(name: str, rows: dict, data: BenchData) -> dict:
    invariance = {m: rows[m]["invariance"] for m in rows}
    tasks = list(data.tasks)
    own = {p: _own_margin(invariance, p) for p in OWN}
    most_invariant = {p: max(own[p], key=own[p].get) == f"rotnet-{p}" for p in OWN}
    best = {t: max(MEMBERS, key=lambda m: rows[m]["accuracy"][t]) for t in tasks}
    gap = {t: round(rows["fused"]["accuracy"][t] - rows[best[t]]["accuracy"][t], 2)
           for t in tasks}
    summary = {
        "dataset": name, "summary": True,
        "own_invariance": own,
        "each_preset_most_invariant_to_its_own": most_invariant,
        "best_member_per_task": best,
        "no_single_preset_best_on_both": len(set(best.values())) > 1,
        "fused_minus_best_member": gap,
        "fused_within_1_point": {t: gap[t] >= -1.0 for t in tasks},
        "fused_minus_wide_control": {t: round(rows["fused"]["accuracy"][t]
                                              - rows["rotnet-default-wide"]["accuracy"][t], 2)
                                     for t in tasks},
    }
    print(json.dumps(summary), flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--width", type=int, default=32, help="conv net width of a member")
    parser.add_argument("--k", type=int, default=16, help="values per continuous transform")
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--protocol", choices=("v2", "paper"), default="v2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/invariance-benchmark")
    args = parser.parse_args()
    for name in args.datasets:
        run(name, args)


if __name__ == "__main__":
    main()
