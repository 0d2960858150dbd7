"""The end-of-run files: summary.json, weights.csv, the image grids' data and the plots,
written from explicit values (the trainer calls it from `Trainer.finish`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from betaweighter.experiment import diagnostics, plots
from betaweighter.experiment.rundir import RunDir
from betaweighter.io import atomic_write_text, write_json

__all__ = ["write_report"]


def write_report(run: RunDir, summary: dict[str, Any], weights: Any, pruner: Any,
                 bundle: Any) -> None:
    """Write a finished run's per-instance weights, plots and summary into `run`. The
    summary comes last: it marks the run finished, so a run stopped before it has all its
    end-of-run files written again by ``--resume``."""
    pruned = pruner.pruned if pruner is not None else np.zeros(weights.num_instances, bool)
    atomic_write_text(run.path / "weights.csv", diagnostics.weights_table(weights, pruned))
    plots.save_extremes(run.path / "plots" / "extremes.npz", weights, bundle)
    plots.draw_run_plots(run)
    write_json(run.path / "summary.json", summary)
