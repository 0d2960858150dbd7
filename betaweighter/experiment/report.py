"""The end of a run: test accuracy of the best model, summary.json, weights.csv, plots."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from betaweighter.evaluate._runtime import write_json_atomic
from betaweighter.evaluate.linear import linear_probe
from betaweighter.experiment import plots
from betaweighter.experiment.checkpoint import load_checkpoint
from betaweighter.experiment.metrics import read_metrics
from betaweighter.experiment.rundir import atomic_write_text

if TYPE_CHECKING:
    from betaweighter.experiment.trainer import Trainer

GRID_IMAGES = 36


def finish(trainer: Trainer) -> dict[str, Any]:
    c, cfg, run_dir = trainer.c, trainer.cfg, trainer.run_dir
    best = run_dir / "checkpoints" / "best.pt"
    if best.is_file():
        c.model.load_state_dict(load_checkpoint(best, map_location=c.device)["model"])
    e = cfg.evaluate
    probe = linear_probe(c.model, c.bundle.target_train, c.bundle.target_val, c.bundle.test,
                         batch_size=e.batch_size, device=c.device, max_iter=e.max_iter,
                         c_values=e.final_c_grid)
    rows = trainer.metrics.rows
    summary = {
        "run": run_dir.name,
        "method": cfg.weights.method,
        "pruning": cfg.pruning.rule if cfg.pruning.enabled else None,
        "dataset": c.bundle.name,
        "epochs": trainer.epoch,
        "best_epoch": trainer.best_epoch,
        "best_val_accuracy": _finite(trainer.best_val),
        "test_accuracy": probe["top1"],
        "test_mean_per_class_accuracy": probe["mean_per_class_accuracy"],
        "probe_C": probe["C"],
        "calibration": probe["calibration"],
        "kept_fraction": float(c.pruner.kept_fraction),
        "pruned_in_domain_share": _in_domain_share(rows),
        "train_seconds": trainer.train_seconds,
        "images_seen": trainer.images_seen,
    }
    write_json_atomic(run_dir / "summary.json", summary)  # NaN -> null: always valid JSON
    write_weights_csv(trainer, run_dir / "weights.csv")
    make_plots(run_dir, trainer)
    return summary


def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _in_domain_share(rows: list[dict[str, Any]]) -> float | None:
    pruned = sum(int(r.get("pruned") or 0) for r in rows)
    in_domain = [r.get("pruned_in_domain") for r in rows]
    if pruned == 0 or any(v is None for v in in_domain):
        return None
    return sum(int(v) for v in in_domain) / pruned


def weights_table(weights: Any, pruned: np.ndarray) -> str:
    """CSV text: index, mean, std, pruned (one row per pool instance)."""
    mean = weights.mean().detach().double().cpu().numpy()
    std = weights.std().detach().double().cpu().numpy()
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["index", "mean", "std", "pruned"])
    for i in range(len(mean)):
        w.writerow([i, f"{mean[i]:.6g}", f"{std[i]:.6g}", int(pruned[i])])
    return out.getvalue()


def write_weights_csv(trainer: Trainer, path: Path) -> None:
    atomic_write_text(path, weights_table(trainer.c.weights, trainer.c.pruner.pruned))


def make_plots(run_dir: Path, trainer: Trainer) -> list[Path]:
    """Every plot of a run; returns their paths."""
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    paths = [out / "weight_histograms.png", out / "curves.png"]
    plots.weight_histograms(trainer.histograms, paths[0])
    plots.curves(read_metrics(run_dir / "metrics.csv"), paths[1])
    bundle = trainer.c.bundle
    mean = trainer.c.weights.mean().detach().cpu()
    order = torch.argsort(mean, stable=True)
    k = min(GRID_IMAGES, len(order))
    for name, idx in (("highest", order.flip(0)[:k]), ("lowest", order[:k])):
        images = torch.stack([torch.as_tensor(bundle.pool[int(i)][0]) for i in idx])
        path = out / f"{name}_weighted.png"
        plots.image_grid(images, bundle.mean, bundle.std, path,
                         f"{name} mean weight ({float(mean[idx].min()):.2f}-"
                         f"{float(mean[idx].max()):.2f})")
        paths.append(path)
    return paths
