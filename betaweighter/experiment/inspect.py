"""Read a run's per-instance weights from its files, without building its data.

What the weights separate comes from metrics.csv: the trainer writes the AUROC of the mean
weights for in-domain against out-of-domain instances (and per kind) each epoch where the
pool's domain is known, so the verdict reads the row of the checkpoint's epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from betaweighter.errors import CheckpointError
from betaweighter.experiment.diagnostics import verdict, weights_table
from betaweighter.experiment.factory import build_weights
from betaweighter.experiment.rundir import RunDir

__all__ = ["epoch_row", "read_weights"]


def read_weights(run_dir: str | Path, which: str = "last") -> tuple[str, str]:
    """(weights.csv text, verdict sentence) of a run at its `which` checkpoint."""
    run = RunDir(run_dir)
    cfg = run.config()
    state = run.state(which)
    if state["config"] != cfg.to_dict():
        raise CheckpointError(f"{run.config_path} differs from the config saved in "
                              f"{run.checkpoint_path(which)}: restore the run's config.yaml")
    n = int(state.get("num_instances", 0))
    weights = build_weights(cfg, n)
    try:
        weights.load_state_dict(state["weights"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{run.checkpoint_path(which)}: the saved weights do not fit "
                              f"the run's weighting method ({str(e).splitlines()[0]})") from None
    pruner = state.get("pruner")
    pruned = (np.asarray(torch.as_tensor(pruner["pruned"]).numpy(), bool) if pruner
              else np.zeros(n, bool))
    optimizer = (state.get("meta") or {}).get("weight_optimizer")
    visits = torch.as_tensor(optimizer["visits"]) if optimizer else None
    try:  # the weights stand without metrics.csv; only the verdict's second half needs it
        row = epoch_row(run.metrics(), int(state["epoch"]))
    except CheckpointError:
        row = None
    return (weights_table(weights, pruned),
            verdict(weights, visits, cfg.pruning.epsilon, cfg.pruning.delta, row))


def epoch_row(rows: list[dict[str, str]], epoch: int) -> dict[str, Any] | None:
    """The metrics.csv row of `epoch` (the checkpoint's last finished epoch); None when
    there is none (before the first epoch ends): another epoch's row would describe other
    weights."""
    for row in reversed(rows):
        if row.get("epoch", "").strip() == str(epoch):
            return row
    return None
