"""How much of the per-instance meta-gradient repeats from visit to visit, and what raises it.

On the demo set (digits in-domain, photo patches as distractors), a model is first trained
by plain rotation prediction for `--warm-epochs`. Then, with the model held fixed, the
meta-gradient of a fixed probe set of pool instances is computed `--repeats` times, each with
a fresh labelled episode and a fresh Beta sample, under several options:

* ``sample``: the paper's step (one 5-way 5-shot 5-query episode, the Beta sample inside
  the look-ahead, the gradient to log alpha through the sample);
* ``mean-estimator``: the same, with the gradient to log alpha through the Beta mean;
* ``episode-x4``: the meta direction v averaged over 4 episodes (4x the episode's cost);
* ``big-episode``: one 10-way 10-shot 10-query episode;
* ``shared-direction``: v averaged over the episodes of the last 10 steps (what an
  exponential moving average of v across steps gives at no extra cost; here measured at a
  fixed model, so it shows the variance reduction, not the cost of staleness).

For each option: the repeatability r (Pearson correlation across instances between two
repeats, averaged over pairs): the share of the variance that is signal, SNR = r / (1 - r);
the AUROC of one visit's and of the repeats' mean for digits against patches (the sign is
"helpful": a more negative meta-gradient raises the weight); and the seconds per batch.

    python benchmarks/meta_snr.py                      # conv net, the demo config
    python benchmarks/meta_snr.py --model resnet18
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

import betaweighter as bw
from betaweighter.meta import gradients
from betaweighter.meta.virtual_step import VirtualOptimizer
from betaweighter.models import build_model

OPTIONS = ("sample", "mean-estimator", "episode-x4", "big-episode", "shared-direction")


def _train(model, opt, pool, epochs, batch, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(pool), generator=g)
        for i in range(0, len(perm) - batch + 1, batch):
            x = torch.stack([pool[int(j)][0] for j in perm[i:i + batch]])
            inputs, labels = bw.rotate4(x)
            F.cross_entropy(model(inputs), labels).backward()
            opt.step()
            opt.zero_grad()


def _directions(model, objective, stepped, names, episodes):
    vs = [gradients.meta_direction(model, stepped, names, objective)[0] for _ in range(episodes)]
    return {n: torch.stack([v[n] for v in vs]).mean(0) for n in names}


def _meta_grads(model, opt, x, idx, weights, option, objectives):
    """Per-instance gradient of M w.r.t. log alpha under `option` (model held fixed)."""
    inputs, labels = bw.rotate4(x)
    w = weights.sample(idx)
    losses = F.cross_entropy(model(inputs), labels, reduction="none")
    loss = gradients.weighted_mean(w.detach().repeat_interleave(4), losses, False)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    grads = dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names])))
    vopt = VirtualOptimizer(opt, params)
    theta = {n: p.detach() for n, p in params.items()}
    state = vopt.initial_state()
    stepped, _ = vopt.step(theta, grads, state)
    episodes = {"episode-x4": 4, "shared-direction": 10}.get(option, 1)
    objective = objectives["big" if option == "big-episode" else "small"]
    v = _directions(model, objective, stepped, names, episodes)
    tangent = gradients.virtual_tangent(vopt, theta, grads, state, v)
    batch = gradients.Batch(model, inputs, lambda out: F.cross_entropy(out, labels,
                                                                        reduction="none"),
                            losses, 4, False, losses.numel())
    d = gradients.directional(batch, theta, tangent, finite_difference=False)
    g_w = gradients.per_instance(gradients.per_row(batch, d, w.detach().repeat_interleave(4)),
                                 4)
    a, b = weights.concentrations(idx)
    if option == "mean-estimator":
        chain = (a * b / (a + b) ** 2).detach()  # d mean / d log alpha
    else:
        chain = torch.autograd.grad(w.sum(), weights.log_alpha)[0][idx]
    return (g_w * chain).detach().numpy(), g_w.detach().numpy()


def run(args) -> list[dict]:
    torch.manual_seed(args.seed)
    data = bw.data.demo(seed=args.seed)
    model = build_model(args.model, num_classes=4, **({"width": 32, "blocks": 4}
                                                      if args.model == "convnet" else {}))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    _train(model, opt, data.pool, args.warm_epochs, 32, args.seed)
    model.train()
    rng = np.random.default_rng(args.seed)
    digits = rng.choice(np.flatnonzero(data.in_domain), args.probe // 2, replace=False)
    patches = rng.choice(np.flatnonzero(~data.in_domain), args.probe // 2, replace=False)
    probe = rng.permutation(np.r_[digits, patches])
    is_digit = data.in_domain[probe]
    objectives = {"small": bw.PrototypicalLoss(5, 5, 5, seed=args.seed).bind(data.target_train),
                  "big": bw.PrototypicalLoss(10, 10, 10, seed=args.seed).bind(data.target_train)}
    weights = bw.BetaWeights(len(data.pool))
    rows = []
    for option in OPTIONS:
        repeats, raw, seconds = [], [], 0.0
        for _ in range(args.repeats):
            out, out_w = np.zeros(len(probe)), np.zeros(len(probe))
            for i in range(0, len(probe), 32):
                idx = torch.as_tensor(probe[i:i + 32])
                x = torch.stack([data.pool[int(j)][0] for j in idx])
                start = time.perf_counter()
                out[i:i + 32], out_w[i:i + 32] = _meta_grads(model, opt, x, idx, weights,
                                                             option, objectives)
                seconds += time.perf_counter() - start
            repeats.append(out)
            raw.append(out_w)
        r = float(np.mean([np.corrcoef(a, b)[0, 1]
                           for a, b in itertools.combinations(repeats, 2)]))
        r_w = float(np.mean([np.corrcoef(a, b)[0, 1] for a, b in itertools.combinations(raw, 2)]))
        mean = np.mean(repeats, axis=0)
        rows.append({
            "model": args.model, "warm_epochs": args.warm_epochs, "option": option,
            "repeatability": round(r, 3), "snr": round(r / max(1 - r, 1e-9), 3),
            "repeatability_dM_dw": round(r_w, 3),
            "auroc_one_visit": round(float(roc_auc_score(is_digit, -repeats[0])), 3),
            "auroc_mean_of_repeats": round(float(roc_auc_score(is_digit, -mean)), 3),
            "mean_digits": float(mean[is_digit].mean()),
            "mean_patches": float(mean[~is_digit].mean()),
            "seconds_per_batch": round(seconds / (args.repeats * len(probe) / 32), 4),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="convnet", choices=["convnet", "resnet18"])
    p.add_argument("--warm-epochs", type=int, default=2)
    p.add_argument("--probe", type=int, default=256, help="instances (half digits)")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    run(p.parse_args())


if __name__ == "__main__":
    main()
