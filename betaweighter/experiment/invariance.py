"""The invariance task of ``betaweighter invariance`` / ``betaweighter evaluate --task
invariance``: the ``evaluate.invariance`` config section run on a (possibly fused)
checkpoint, with the table, its summary and two plots written beside the checkpoint.

Which images: ``data.images`` (a folder), or, for a checkpoint inside a run directory,
the run's own test split, rebuilt from the run's config and un-normalised. The feature
statistics come from ``data.reference`` or the measured images (as in the paper, which
used ImageNet's validation set for both). ``data.views`` adds the real-world measurement
on multi-view folders (``object/view.png``).
"""

from __future__ import annotations

from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from betaweighter.errors import BetaweighterError, ConfigError
from betaweighter.evaluate.invariance import (
    input_config,
    measure_invariance,
    reference_stats,
    to_uint8,
)
from betaweighter.evaluate.view_invariance import measure_view_invariance

__all__ = ["invariance_files", "run_invariance", "run_images"]


def invariance_files(folder: Path, suffix: str = "") -> dict[str, Path]:
    """Where the invariance task writes: the table, its summary, the plots, the views."""
    stem = f"invariance{suffix}"
    return {"table": folder / f"{stem}.csv", "summary": folder / f"{stem}_summary.csv",
            "curves": folder / f"{stem}_curves.png", "bar": folder / f"{stem}_bar.png",
            "views": folder / f"{stem}_views.csv"}


def run_images(checkpoint: Path) -> torch.Tensor:
    """The test split of the run that wrote `checkpoint`, as uint8 images."""
    from betaweighter.experiment.factory import build_data
    from betaweighter.experiment.rundir import RunDir

    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    if run is None or not (run / "config.yaml").is_file():
        raise ConfigError(
            f"config key 'evaluate.invariance.data.images' is required for {checkpoint}: it "
            "is not inside a run directory whose test split could be used. Give a folder of "
            "images (any tree of image files)")
    cfg = RunDir(run).config()
    splits = run / "splits.json"
    bundle = build_data(cfg, cfg.experiment.seed, splits if splits.is_file() else None)
    test = bundle.test
    images = torch.stack([torch.as_tensor(test[i][0]) for i in range(len(cast(Sized, test)))])
    return to_uint8(images, bundle.mean, bundle.std)


def run_invariance(model: nn.Module, o: dict[str, Any], folder: Path, device: torch.device,
                   checkpoint: Path, suffix: str = "") -> dict[str, Any]:
    """Measure, write the files, return the payload's ``result``."""
    from betaweighter.experiment.invariance_plots import plot_invariance

    d = o["data"]
    images: Any = d["images"] if d["images"] else run_images(checkpoint)
    inputs = input_config(model, o["image_size"], o["resize"], o["mean"], o["std"])
    try:
        stats = reference_stats(model.to(device), d["reference"] or images, inputs=inputs,
                                protocol=o["protocol"], shrinkage=o["shrinkage"],
                                batch_size=o["batch_size"], device=device)
    except ValueError as e:
        if isinstance(e, BetaweighterError):
            raise
        raise ConfigError(f"config section 'evaluate.invariance': {e}") from None
    table = measure_invariance(
        model, images, o["transforms"], k=o["k"], num_images=o["num_images"], stats=stats,
        seed=o["seed"], protocol=o["protocol"], image_size=inputs.crop, resize=inputs.resize,
        mean=o["mean"], std=o["std"], batch_size=o["batch_size"], device=device)
    files = invariance_files(folder, suffix)
    table.to_csv(files["table"])
    table.to_csv(files["summary"], summary=True)
    label = checkpoint.parent.parent.name if checkpoint.parent.name == "checkpoints" else (
        checkpoint.stem)
    plot_invariance({label: table}, files["curves"], "curve",
                    title=f"invariance ({o['protocol']} protocol)")
    plot_invariance({label: table}, files["bar"], "bar")
    written = {k: str(v) for k, v in files.items() if k != "views"}
    result: dict[str, Any] = {"summary": table.summary(), "stats": stats.to_dict(),
                              "images": int(table.rows[0]["count"]) if table.rows else 0,
                              "protocol": o["protocol"]}
    if d["views"]:
        views = measure_view_invariance(
            model, d["views"], stats=stats, protocol=o["protocol"], image_size=inputs.crop,
            mean=o["mean"], std=o["std"], batch_size=o["batch_size"], device=device)
        views.to_csv(files["views"])
        written["views"] = str(files["views"])
        result["views"] = views.summary()[0] if views.rows else None
    result["files"] = written
    return result
