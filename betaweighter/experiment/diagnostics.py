"""Numbers a user can act on: what the weights have learnt so far, per epoch and per run.

Per epoch (a row of metrics.csv): how far the mean weights have spread, which fraction of
the pool is confidently low (prunable by the CDF rule) or confidently high, the running
meta-gradient scale of the scale-free weight optimiser, and the median number of meta
updates each instance has received. Where the pool's domain is known (the demo set, Visual
Decathlon), also the AUROC of the mean weights for in-domain against out-of-domain
instances and the in-domain share of what was pruned. `verdict` turns them into a sentence.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from betaweighter.weights.base import InstanceWeights

__all__ = ["auroc", "data_fingerprint", "verdict", "weight_diagnostics", "weights_table"]


def auroc(in_domain: np.ndarray | None, scores: np.ndarray) -> float:
    """AUROC of `scores` for in-domain (positive) against the rest; NaN when undefined."""
    if in_domain is None:
        return math.nan
    labels = np.asarray(in_domain, bool)
    if labels.all() or not labels.any():
        return math.nan
    return float(roc_auc_score(labels, np.asarray(scores, np.float64)))


def weight_diagnostics(weights: InstanceWeights, meta: Any, epsilon: float, delta: float,
                       in_domain: np.ndarray | None = None,
                       pruner: Any = None) -> dict[str, float]:
    """The per-epoch diagnostics (see the module docstring)."""
    mean = weights.mean().detach().double().cpu().numpy()
    low = weights.cdf(epsilon).detach().double().cpu().numpy()
    high = 1.0 - weights.cdf(1.0 - epsilon).detach().double().cpu().numpy()
    optimizer = getattr(meta, "weight_optimizer", None)
    visits = getattr(optimizer, "visits", None)
    out = {
        "weight_spread": float(mean.std()),
        "confident_low": float((low > delta).mean()),
        "confident_high": float((high > delta).mean()),
        "meta_grad_scale": optimizer.scale if optimizer is not None else math.nan,
        "median_visits": float(visits.double().median()) if visits is not None else math.nan,
        "auroc_in_domain": auroc(in_domain, mean),
        "pruned_in_domain_share": math.nan,
    }
    if pruner is not None and in_domain is not None and pruner.pruned.any():
        out["pruned_in_domain_share"] = float(np.asarray(in_domain)[pruner.pruned].mean())
    return out


def weights_table(weights: InstanceWeights, pruned: np.ndarray) -> str:
    """CSV text: index, mean, std, pruned (one row per pool instance)."""
    mean = weights.mean().detach().double().cpu().numpy()
    std = weights.std().detach().double().cpu().numpy()
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["index", "mean", "std", "pruned"])
    for i in range(len(mean)):
        w.writerow([i, f"{mean[i]:.6g}", f"{std[i]:.6g}", int(pruned[i])])
    return out.getvalue()


def verdict(weights: InstanceWeights, visits: torch.Tensor | None, epsilon: float,
            delta: float) -> str:
    """One sentence: how separated the weights are, or when pruning should start."""
    mean = weights.mean().detach().double().cpu().numpy()
    low = weights.cdf(epsilon).detach().double().cpu().numpy()
    n = float(visits.double().median()) if visits is not None else math.nan
    frac_low = float((low > delta).mean())
    if frac_low >= 0.01:
        high = float(((1 - weights.cdf(1 - epsilon).double().cpu().numpy()) > delta).mean())
        return (f"weights have separated: {100 * frac_low:.1f}% of the pool is confidently "
                f"low (P(w <= {epsilon:g}) > {delta:g}, prunable) and {100 * high:.1f}% "
                f"confidently high after {n:.0f} visits per instance; spread of the mean "
                f"weights {mean.std():.3f}")
    # Extrapolate at the current pace: the 1 % most prunable instances have moved from
    # where every instance started towards the pruning line in `n` visits.
    if float(weights.std().abs().max()) == 0.0:  # point weights: the mean falls to epsilon
        start, edge, goal = _start_mean(weights), float(np.quantile(mean, 0.01)), epsilon
        progress, needed = start - edge, start - goal
    else:  # distributions: the CDF at epsilon rises to delta
        start, edge = _start_cdf(weights, epsilon), float(np.quantile(low, 0.99))
        progress, needed = edge - start, delta - start
    when = "after an unknown number of visits (no trend yet)"
    if n > 0 and progress > 1e-9 and needed > 0:
        when = f"after about {n * needed / progress:.0f} visits"
    return (f"weights have not separated yet ({n:.0f} visits per instance; at this pace "
            f"expect pruning {when})")


def _start_cdf(weights: InstanceWeights, epsilon: float) -> float:
    init = getattr(weights, "init_cdf", None)
    return float(init(epsilon)) if callable(init) else min(max(epsilon, 0.0), 1.0)


def _start_mean(weights: InstanceWeights) -> float:
    return float(getattr(weights, "init", 0.5))


def data_fingerprint(bundle: Any) -> dict[str, Any]:
    """Sizes of every part of a `DataBundle` and a digest of a few items (fetched under a
    fixed seed, so random augmentation does not change it): two bundles with the same
    fingerprint were built from the same data."""
    h = hashlib.sha256()
    parts = {"pool": bundle.pool, "target_train": bundle.target_train,
             "target_val": bundle.target_val, "test": bundle.test}
    with torch.random.fork_rng(devices=[]):
        for name, ds in parts.items():
            n = len(ds)
            for i in sorted({0, n // 2, n - 1}) if n else []:
                torch.manual_seed(0)
                x = torch.as_tensor(ds[i][0]).float().contiguous()
                h.update(name.encode())
                h.update(np.ascontiguousarray(x.numpy()).tobytes())
    return {"dataset": bundle.name, **{k: len(v) for k, v in parts.items()},
            "num_classes": int(bundle.num_classes), "image_size": int(bundle.image_size),
            "items_sha256": h.hexdigest()}
