"""Numbers a user can act on: what the weights have learnt so far, per epoch and per run.

Per epoch (a row of metrics.csv): how far the mean weights have spread, which fraction of
the pool is confidently low (prunable by the CDF rule) or confidently high, the running
meta-gradient scale of the scale-free weight optimiser, and the median number of meta
updates each instance has received. Where the pool's domain is known (the demo set, Visual
Decathlon, the mixture set, image folders with ``data.options.domains``), also the AUROC of
the mean weights for in-domain against out-of-domain instances and the in-domain share of
what was pruned; where the pool's kinds are known too (``bundle.info["kinds"]``), the AUROC
of in-domain against each out-of-domain kind (``auroc_<kind>``) and the fraction of each
kind pruned so far (``pruned_<kind>``). `verdict` turns them into a sentence: it calls the
weights separated only by what they separate (the AUROC), never by their spread alone.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from betaweighter.data.domains import RESERVED_KINDS
from betaweighter.weights.base import InstanceWeights

__all__ = ["auroc", "data_fingerprint", "kind_columns", "verdict", "weight_diagnostics",
           "weights_table"]




def auroc(in_domain: np.ndarray | None, scores: np.ndarray) -> float:
    """AUROC of `scores` for in-domain (positive) against the rest; NaN when undefined."""
    if in_domain is None:
        return math.nan
    labels = np.asarray(in_domain, bool)
    if labels.all() or not labels.any():
        return math.nan
    return float(roc_auc_score(labels, np.asarray(scores, np.float64)))


def weight_diagnostics(weights: InstanceWeights, meta: Any, epsilon: float, delta: float,
                       in_domain: np.ndarray | None = None, pruner: Any = None, *,
                       kinds: Sequence[str] | None = None) -> dict[str, float]:
    """The per-epoch diagnostics (see the module docstring).

    `kinds` names each pool instance's kind (``bundle.info["kinds"]``); with `in_domain`
    it adds `kind_columns`: the same columns every epoch, NaN where undefined (no pruner:
    the ``pruned_<kind>`` columns are NaN, not 0).
    """
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
    if kinds is not None and in_domain is not None:
        pruned = None if pruner is None else np.asarray(pruner.pruned, bool)
        out.update(kind_columns(in_domain, kinds, mean, pruned))
    return out


def kind_columns(in_domain: np.ndarray, kinds: Sequence[str], scores: np.ndarray,
                 pruned: np.ndarray | None) -> dict[str, float]:
    """``auroc_<kind>``: AUROC of `scores` for the in-domain instances against those of each
    out-of-domain kind; ``pruned_<kind>``: the fraction of each kind (in-domain ones too)
    that `pruned` marks (NaN without a pruner). Kinds in sorted order, AUROCs first."""
    labels = np.asarray(in_domain, bool).reshape(-1)
    names = np.asarray(list(kinds), dtype=object)
    if len(names) != len(labels):
        raise ValueError(f"{len(names)} kinds for {len(labels)} in_domain flags")
    clash = sorted(set(RESERVED_KINDS) & set(names.tolist()))
    if clash:
        raise ValueError(f"kinds {clash} would overwrite other columns; rename them")
    scores = np.asarray(scores, np.float64)
    out: dict[str, float] = {}
    for kind in sorted(set(names[~labels].tolist())):
        keep = labels | ((names == kind) & ~labels)
        out[f"auroc_{kind}"] = auroc(labels[keep], scores[keep])
    for kind in sorted(set(names.tolist())):
        members = names == kind
        out[f"pruned_{kind}"] = (math.nan if pruned is None
                                 else float(np.asarray(pruned, bool)[members].mean()))
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
            delta: float, metrics: Mapping[str, Any] | None = None) -> str:
    """One sentence: how far the weights have spread, what (if anything known) they
    separate, or when pruning should start.

    `metrics` is the run's metrics.csv row of the same epoch (strings are fine; None when
    there is none). Where it holds a finite ``auroc_in_domain`` the pool's domain is known,
    and the sentence gives that AUROC, the per-kind ``auroc_<kind>`` columns and the
    in-domain share of what was pruned; otherwise it says that spread alone does not show
    the weights separate useful data, and how to measure it.
    """
    mean = weights.mean().detach().double().cpu().numpy()
    low = weights.cdf(epsilon).detach().double().cpu().numpy()
    n = float(visits.double().median()) if visits is not None else math.nan
    frac_low = float((low > delta).mean())
    separation = _separation(metrics or {})
    if frac_low >= 0.01:
        high = float(((1 - weights.cdf(1 - epsilon).double().cpu().numpy()) > delta).mean())
        spread = (f"weights have spread: {100 * frac_low:.1f}% of the pool is confidently "
                  f"low (P(w <= {epsilon:g}) > {delta:g}, prunable) and {100 * high:.1f}% "
                  f"confidently high after {n:.0f} visits per instance; spread of the mean "
                  f"weights {mean.std():.3f}")
        if separation is not None:
            return f"{spread}. {separation}"
        if metrics is None:
            return (f"{spread}. Spread alone does not show that they separate useful data "
                    "from the rest, and metrics.csv has no readable row for this epoch to "
                    "tell")
        return (f"{spread}. Spread alone does not show that they separate useful data from "
                "the rest: the pool's domain is unknown. For an image-folder pool, list it "
                "in data.options.domains (a CSV file: path,in_domain[,kind]) to measure it")
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
    tail = "" if separation is None else f". So far: {separation}"
    return (f"weights have not spread yet ({n:.0f} visits per instance; at this pace "
            f"expect pruning {when}){tail}")


def _number(value: Any) -> float:
    """A metrics.csv cell as a float (NaN when empty or not a number)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _separation(row: Mapping[str, Any]) -> str | None:
    """What the weights separate, from a metrics row; None when the domain is unknown."""
    overall = _number(row.get("auroc_in_domain"))
    if not math.isfinite(overall):
        return None
    if overall >= 0.7:
        how = "they separate in-domain from out-of-domain data"
    elif overall >= 0.55:
        how = "they separate in-domain from out-of-domain data only weakly"
    elif overall > 0.45:
        how = "they do not separate in-domain from out-of-domain data"
    else:
        how = "they rank out-of-domain data above in-domain data (pruning would cut useful data)"
    text = f"{how}: in-domain vs out-of-domain AUROC {overall:.2f}"
    per_kind = {k[len("auroc_"):]: _number(v) for k, v in row.items()
                if k.startswith("auroc_") and k != "auroc_in_domain"}
    shown = [f"{kind} {value:.2f}" for kind, value in sorted(per_kind.items())
             if math.isfinite(value)]
    if shown:
        text += f" (per kind: {', '.join(shown)})"
    share = _number(row.get("pruned_in_domain_share"))
    if math.isfinite(share):
        text += f"; {100 * share:.0f}% of what was pruned is in-domain"
        pruned = {k[len("pruned_"):]: _number(v) for k, v in row.items()
                  if k.startswith("pruned_") and k[len("pruned_"):] not in RESERVED_KINDS}
        parts = [f"{kind} {100 * value:.0f}%" for kind, value in sorted(pruned.items())
                 if math.isfinite(value)]
        if parts:
            text += f" (pruned so far: {', '.join(parts)})"
        kept = _number(row.get("kept_fraction"))
        if math.isfinite(kept) and kept < 1:  # what the matched random control would do
            text += (f"; random pruning of as many would take {100 * (1 - kept):.0f}% of "
                     "every kind")
    elif "pruned_in_domain_share" in row:
        text += "; nothing pruned"
    return text


def _start_cdf(weights: InstanceWeights, epsilon: float) -> float:
    return float(weights.init_cdf(epsilon))


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
