"""How fast do weights separate, and how often does noise alone prune? (demo set)

Each case trains the demo's conv net by rotation prediction for `--epochs` epochs with BDW
weights, the scale-free WeightOptimizer at learning rate `lr`, and the CDF pruning rule
(epsilon 0.1, delta 0.5, decided after every epoch). Two meta objectives:

* ``noise``: M(theta') = <r, theta'> with a fresh random direction r at every call: a
  zero-mean signal for every instance, independent of the pool. Whatever it prunes is a
  false prune.
* ``proto``: the demo's 5-way 5-shot 5-query prototypical loss on labelled digits.

And a pool with a known consistent signal: ``labelnoise``, supervised classification of
Gaussian blobs where half the pool has flipped labels and the meta objective is the loss on
clean labelled data. Reported: the share of the flipped half pruned, and of the clean half.

Printed per case and epoch: the fraction of the pool pruned so far, the median number of
meta updates per instance, and for ``proto`` the AUROC of the mean weights (digits against
photo patches) and the digits' share of what was pruned.

    python benchmarks/pruning_calibration.py
    python benchmarks/pruning_calibration.py --lrs 0.1 --directions running --epochs 10
    python benchmarks/pruning_calibration.py --method cluster --data mixture \
        --objectives noise proto --lrs 0.1 --directions running --epochs 5

``--method cluster`` runs the default weighting instead: cluster weights (with the target
prior unless ``--prior none``), the normalised loss, one-sided differences, and the budget
rule keeping half the pool after ``--score-epochs``. The budget always prunes the same
count, so the calibration question becomes what noise prunes: under ``noise`` the AUROC
should stay where the prior put it or fall towards 0.5, never rise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch
import torch.nn.functional as F

import betaweighter as bw
from betaweighter.experiment.diagnostics import auroc
from betaweighter.models import build_model


def noise_objective(seed: int):
    g = torch.Generator().manual_seed(seed)

    def objective(look) -> torch.Tensor:
        total = torch.zeros(())
        for p in look.params.values():
            if p.requires_grad:
                total = total + (torch.randn(p.shape, generator=g, dtype=p.dtype) * p).sum()
        return total

    return objective


def run_case(data, objective_name: str, lr: float, direction: str, every: int, epochs: int,
             seed: int, method: str = "bdw", prior: str = "target",
             score_epochs: int = 2) -> list[dict]:
    torch.manual_seed(seed)
    model = build_model("convnet", num_classes=4, width=32, blocks=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    if objective_name == "noise":
        objective, target = noise_objective(seed), None
    else:
        objective, target = bw.PrototypicalLoss(5, 5, 5, seed=seed), data.target_train
    cluster = method == "cluster"
    if cluster:
        weights = bw.ClusterWeights(len(data.pool), prior=prior, seed=seed)
        weights.fit(data.pool, data.target_train, model)
        pruner = bw.PruningScheduler(weights, "budget", keep=0.5, score_epochs=score_epochs,
                                     seed=seed, in_domain=data.in_domain)
    else:
        weights = bw.BetaWeights(len(data.pool))
        pruner = bw.PruningScheduler(weights, "cdf", epsilon=0.1, delta=0.5, seed=seed,
                                     in_domain=data.in_domain)
    meta = bw.MetaWeighter(model, weights, opt, objective, target=target,
                           weight_optimizer=bw.WeightOptimizer(lr=lr), every=every,
                           direction=direction, normalise=cluster,
                           meta_gradient="one_sided" if cluster else "auto")
    rows, start = [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        meta.plain = not pruner.scoring
        for x, idx in pruner.loader(data.pool, batch_size=32):
            inputs, labels = bw.rotate4(x)
            meta.backward(inputs, lambda out, y=labels: F.cross_entropy(out, y,
                                                                        reduction="none"), idx)
            opt.step()
            opt.zero_grad()
        record = pruner.step()
        if cluster and pruner.scoring:
            weights.on_epoch_end(epoch, model)
        mean = weights.mean().numpy()
        pruned = pruner.pruned
        rows.append({
            "method": method, "objective": objective_name, "lr": lr, "direction": direction,
            "every": every,
            "epoch": epoch, "pruned_fraction": round(float(pruned.mean()), 4),
            "median_visits": float(meta.weight_optimizer.visits.double().median()),
            "auroc_in_domain": round(auroc(data.in_domain, mean), 3),
            "pruned_in_domain_share": (round(float(data.in_domain[pruned].mean()), 3)
                                       if pruned.any() else None),
            "kept_fraction": round(record["kept_fraction"], 4),
            "seconds": round(time.perf_counter() - start, 1),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run_label_noise(lr: float, direction: str, every: int, epochs: int,
                    seed: int) -> list[dict]:
    """The consistent-signal case: flipped labels hurt the clean objective at every visit."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import label_noise_problem  # the tests' problem, so both agree

    x, noisy, flipped, target = label_noise_problem(seed, n=1024)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    weights = bw.BetaWeights(len(x))
    meta = bw.MetaWeighter(model, weights, opt, bw.ClassificationLoss(64, seed=seed),
                           target=target, weight_optimizer=bw.WeightOptimizer(lr=lr),
                           every=every, direction=direction)

    pruner = bw.PruningScheduler(weights, "cdf", epsilon=0.1, delta=0.5, seed=seed)
    rows = []
    for epoch in range(1, epochs + 1):
        for idx in pruner.loader(torch.utils.data.TensorDataset(torch.arange(len(x))),
                                 batch_size=32):
            (idx,) = idx
            y = noisy[idx]
            meta.backward(x[idx], lambda out, y=y: F.cross_entropy(out, y, reduction="none"),
                          idx)
            opt.step()
            opt.zero_grad()
        pruner.step()
        pruned = torch.as_tensor(pruner.pruned)
        rows.append({"objective": "labelnoise", "lr": lr, "direction": direction,
                     "every": every, "epoch": epoch,
                     "flipped_pruned": round(float(pruned[flipped].float().mean()), 4),
                     "clean_pruned": round(float(pruned[~flipped].float().mean()), 4),
                     "auroc_clean": round(auroc((~flipped).numpy(), weights.mean().numpy()), 3)})
        print(json.dumps(rows[-1]), flush=True)

    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--objectives", nargs="+", default=["noise", "proto", "labelnoise"])
    p.add_argument("--lrs", nargs="+", type=float, default=[0.03, 0.1, 0.3])
    p.add_argument("--directions", nargs="+", default=["fresh", "running"])
    p.add_argument("--every", type=int, default=4, help="episode cadence of 'running'")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="bdw", choices=["bdw", "cluster"])
    p.add_argument("--prior", default="target", choices=["target", "none"])
    p.add_argument("--score-epochs", type=int, default=2)
    p.add_argument("--data", default="demo", choices=["demo", "mixture"])
    args = p.parse_args()
    torch.set_num_threads(1)
    data = getattr(bw.data, args.data)(seed=args.seed)
    for objective, lr, direction in itertools.product(args.objectives, args.lrs,
                                                      args.directions):
        every = 1 if direction == "fresh" else args.every
        if objective == "labelnoise":
            run_label_noise(lr, direction, every, args.epochs, args.seed)
        else:
            run_case(data, objective, lr, direction, every, args.epochs, args.seed,
                     args.method, args.prior, args.score_epochs)


if __name__ == "__main__":
    main()
