"""Plots of a run, as PNG files in ``RUN_DIR/plots``.

Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure``), which needs
no GUI and never changes the backend the user's own code has chosen.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

__all__ = ["HIST_BINS", "curves", "diagnostics", "image_grid", "losses", "save_figure",
           "weight_histograms"]


def save_figure(fig: Figure, path: Path) -> Path:
    """`fig` as a PNG at `path`, written atomically: a full disk is one `OutputError`
    naming the file, and never leaves half a PNG."""
    from io import BytesIO

    from betaweighter.io import atomic_write_bytes

    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(path, buffer.getvalue())

HIST_BINS = np.linspace(0.0, 1.0, 41)


def _num(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    try:
        return float(value) if value not in (None, "") else math.nan
    except (TypeError, ValueError):
        return math.nan


def weight_histograms(history: list[np.ndarray], path: Path) -> Path:
    """Histogram of the mean weights per epoch, as a heat map (epoch x weight)."""
    counts = np.stack(history) if history else np.zeros((1, len(HIST_BINS) - 1))
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    im = ax.imshow(np.log1p(counts).T, origin="lower", aspect="auto", cmap="viridis",
                   extent=(0.5, len(counts) + 0.5, 0.0, 1.0))  # epochs count from 1
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean instance weight")
    ax.set_title("distribution of instance weights per epoch")
    fig.colorbar(im, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def curves(rows: list[dict[str, Any]], path: Path) -> Path:
    """Kept fraction and validation accuracy against epoch and against wall time."""
    epoch = np.array([_num(r, "epoch") for r in rows])
    wall = np.cumsum([0.0 if math.isnan(_num(r, "epoch_seconds")) else _num(r, "epoch_seconds")
                      for r in rows])
    kept = np.array([_num(r, "kept_fraction") for r in rows])
    acc = np.array([_num(r, "val_accuracy") for r in rows])
    fig = Figure(figsize=(9, 6))
    axes = fig.subplots(2, 2, sharey="row")
    for col, (x, label) in enumerate([(epoch, "epoch"), (wall, "training wall time (s)")]):
        axes[0, col].plot(x, acc, marker="o")
        axes[0, col].set_ylabel("val accuracy (linear probe)")
        axes[1, col].plot(x, kept, marker="o", color="tab:orange")
        axes[1, col].set_ylabel("kept fraction")
        axes[1, col].set_ylim(0, 1.05)
        axes[1, col].set_xlabel(label)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def losses(rows: list[dict[str, Any]], path: Path) -> Path:
    """The training loss, its parts (the ``pretext_*`` columns, e.g. RPN objectness and
    box regression) and the meta loss against epoch."""
    epoch = np.array([_num(r, "epoch") for r in rows])
    keys = ["train_loss"] + [k for k in (rows[0] if rows else {}) if k.startswith("pretext_")]
    fig = Figure(figsize=(9, 3.8))
    left, right = fig.subplots(1, 2)
    for key in keys:
        left.plot(epoch, [_num(r, key) for r in rows], marker="o", label=key)
    left.set_title("pretext loss", fontsize=10)
    left.legend(fontsize=8)
    right.plot(epoch, [_num(r, "meta_loss") for r in rows], marker="o", color="tab:red")
    right.set_title("meta loss (target objective)", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("epoch")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def diagnostics(rows: list[dict[str, Any]], path: Path) -> Path:
    """The weight diagnostics per epoch: spread, confident fractions, meta-gradient scale,
    visits, and (where the domain is known) AUROC and in-domain share of the pruned."""
    epoch = np.array([_num(r, "epoch") for r in rows])
    panels = [
        ("weight spread (std of mean weights)", ["weight_spread"]),
        ("fraction of the pool", ["confident_low", "confident_high"]),
        ("running meta-gradient RMS", ["meta_grad_scale"]),
        ("median visits per instance", ["median_visits"]),
        ("in-domain vs distractors", ["auroc_in_domain", "pruned_in_domain_share"]),
    ]
    fig = Figure(figsize=(12, 6.5))
    axes = fig.subplots(2, 3).ravel()
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            ax.plot(epoch, [_num(r, key) for r in rows], marker="o", label=key)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        if len(keys) > 1:
            ax.legend(fontsize=8)
    axes[-1].set_axis_off()
    fig.tight_layout()
    save_figure(fig, path)
    return path


def image_grid(images: np.ndarray, path: Path, title: str) -> Path:
    """Save a grid of uint8 images (N, 3, H, W)."""
    x = torch.as_tensor(np.asarray(images)).float() / 255.0
    grid = make_grid(x, nrow=int(np.ceil(np.sqrt(max(len(x), 1)))), padding=2, pad_value=1.0)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.imshow(grid.permute(1, 2, 0).numpy())
    ax.set_axis_off()
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)
    return path


GRID_IMAGES = 36


def save_extremes(path: Path, weights: Any, bundle: Any, k: int = GRID_IMAGES) -> Path:
    """Save the `k` highest- and lowest-weighted pool images (as uint8, un-normalised)
    with their indices and mean weights, so `draw_run_plots` can redraw the grids without
    the dataset."""
    from betaweighter.io import atomic_write_bytes

    mean = weights.mean().detach().float().cpu()
    order = torch.argsort(mean, stable=True)
    k = min(k, len(order))
    m = torch.as_tensor(bundle.mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(bundle.std, dtype=torch.float32).view(1, -1, 1, 1)
    arrays: dict[str, np.ndarray] = {}
    for name, idx in (("highest", order.flip(0)[:k]), ("lowest", order[:k])):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            x = torch.stack([torch.as_tensor(bundle.pool[int(i)][0]).float() for i in idx])
        arrays[name] = ((x * s + m).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        arrays[f"{name}_index"] = idx.numpy()
        arrays[f"{name}_weight"] = mean[idx].numpy()
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **cast(dict[str, Any], arrays))  # numpy stub quirk
    return atomic_write_bytes(path, buffer.getvalue())


def draw_run_plots(run: Any) -> list[Path]:
    """Every plot of a run directory (a `RunDir`), from its files alone: histograms, curves
    and diagnostics from the last checkpoint (which holds the metrics rows), image grids
    from plots/extremes.npz. Writes PNGs into ``plots/`` and nothing else."""
    out = run.path / "plots"
    out.mkdir(exist_ok=True)
    state = run.state("last")
    rows = list(state["metrics"])
    paths = [weight_histograms([np.asarray(h) for h in state["histograms"]],
                               out / "weight_histograms.png"),
             curves(rows, out / "curves.png"), diagnostics(rows, out / "diagnostics.png"),
             losses(rows, out / "losses.png")]
    extremes = out / "extremes.npz"
    if not extremes.is_file() and run.summary() is not None:
        import logging

        logging.getLogger(__name__).warning("%s is missing: the image grids are not drawn",
                                            extremes)
    if extremes.is_file():
        from betaweighter.errors import CheckpointError

        try:
            with np.load(extremes) as data:
                grids = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{extremes} {_unreadable(e)}; delete it to plot without "
                                  "the image grids") from None
        for name in ("highest", "lowest"):
            w = grids[f"{name}_weight"]
            title = f"{name} mean weight ({w.min():.2f}-{w.max():.2f})" if w.size else name
            paths.append(image_grid(grids[name], out / f"{name}_weighted.png", title))
    return paths


def _unreadable(err: BaseException) -> str:
    """Why an extremes.npz did not load, in words that never suggest unpickling it (numpy's
    own message for an object array does)."""
    if isinstance(err, zipfile.BadZipFile):
        return "is not a NumPy .npz archive (truncated or overwritten)"
    if "pickle" in str(err).lower():
        return ("holds Python objects (object arrays), which betaweighter never writes and "
                "never unpickles")
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"is damaged ({type(err).__name__}: {first})" if first else "is damaged"
