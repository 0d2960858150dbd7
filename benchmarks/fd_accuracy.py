"""How accurate is the finite-difference meta-gradient, and at which step size?

The demo conv net (float32) is trained by rotation prediction for `--steps` plain steps;
then, for batches of the demo pool, the per-instance meta-gradient from central finite
differences (two no-grad forwards at theta +- h t, t the unit tangent) is compared with the
exact forward-mode one, for a range of step sizes h = c * eps^(1/3) * max(|theta|, 1).
Reported per c: the relative error in norm over the batch, and the median and 95th
percentile of the per-instance relative errors (instances whose exact meta-gradient is below
1 % of the batch's largest are left out of the per-instance numbers: their relative error is
noise over nothing).

    python benchmarks/fd_accuracy.py
    python benchmarks/fd_accuracy.py --method one_sided   # one forward against the
                                                          # training losses instead of two
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

import betaweighter as bw
from betaweighter.meta import gradients
from betaweighter.models import build_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=100, help="plain training steps first")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--factors", type=float, nargs="+",
                   default=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
    p.add_argument("--method", default="finite_difference",
                   choices=["finite_difference", "one_sided"])
    args = p.parse_args()
    # Large steps move the two passes' midpoint away from the training losses by O(h^2):
    # the library's reproducibility check is meant for its own step, not for this sweep.
    gradients._check_reproduced = lambda *_: None
    torch.manual_seed(0)
    data = bw.data.demo()
    model = build_model("convnet", num_classes=4, width=32, blocks=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    for _ in range(args.steps):
        idx = torch.randperm(len(data.pool), generator=g)[:32]
        x, y = bw.rotate4(torch.stack([data.pool[int(i)][0] for i in idx]))
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    results: dict[float, list] = {c: [] for c in args.factors}
    for b in range(args.batches):
        idx = torch.randperm(len(data.pool), generator=g)[:32]
        x = torch.stack([data.pool[int(i)][0] for i in idx])
        inputs, labels = bw.rotate4(x)
        exact = None
        for method in ["forward"] + args.factors:
            weights = bw.BetaWeights(len(data.pool))
            meta = bw.MetaWeighter(model, weights, opt,
                                   bw.PrototypicalLoss(5, 5, 5, seed=b).bind(data.target_train),
                                   weight_optimizer=bw.WeightOptimizer(lr=1.0, normalise=False),
                                   meta_gradient="forward" if method == "forward"
                                   else args.method, update_buffers=False)
            gradients.FD_STEP = 0.1 if method == "forward" else method
            torch.manual_seed(1000 + b)
            meta.backward(inputs, lambda o, y=labels: F.cross_entropy(o, y, reduction="none"),
                          idx)
            opt.zero_grad()
            got = -weights.log_alpha.detach()[idx].double().numpy()
            if method == "forward":
                exact = got
                continue
            results[method].append((got, exact))
    for c in args.factors:
        got = np.concatenate([r[0] for r in results[c]])
        ref = np.concatenate([r[1] for r in results[c]])
        big = np.abs(ref) > 0.01 * np.abs(ref).max()
        per = np.abs(got - ref)[big] / np.abs(ref)[big]
        print(json.dumps({"method": args.method, "factor": c,
                          "rel_error_norm": float(np.linalg.norm(got - ref)
                                                  / np.linalg.norm(ref)),
                          "per_instance_median": float(np.median(per)),
                          "per_instance_p95": float(np.quantile(per, 0.95))}), flush=True)


if __name__ == "__main__":
    main()
