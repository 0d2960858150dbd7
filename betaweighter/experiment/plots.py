"""Plots of a run (matplotlib, Agg backend, PNG files in ``RUN_DIR/plots``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

HIST_BINS = np.linspace(0.0, 1.0, 41)


def weight_histograms(history: list[np.ndarray], path: Path) -> None:
    """Histogram of the mean weights per epoch, as a heat map (epoch x weight)."""
    counts = np.stack(history) if history else np.zeros((1, len(HIST_BINS) - 1))
    fig, ax = plt.subplots(figsize=(7, 4))
    im = ax.imshow(np.log1p(counts).T, origin="lower", aspect="auto", cmap="viridis",
                   extent=(0.5, len(counts) + 0.5, 0.0, 1.0))  # epochs count from 1
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean instance weight")
    ax.set_title("distribution of instance weights per epoch")
    fig.colorbar(im, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Kept fraction and validation accuracy against epoch and against wall time."""
    epoch = np.array([float(r["epoch"]) for r in rows])
    wall = np.cumsum([float(r.get("epoch_seconds") or 0.0) for r in rows])
    kept = np.array([float(r.get("kept_fraction") or 1.0) for r in rows])
    acc = np.array([float(r["val_accuracy"]) if r.get("val_accuracy") not in (None, "")
                    else np.nan for r in rows])
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharey="row")
    for col, (x, label) in enumerate([(epoch, "epoch"), (wall, "training wall time (s)")]):
        axes[0, col].plot(x, acc, marker="o")
        axes[0, col].set_ylabel("val accuracy (linear probe)")
        axes[1, col].plot(x, kept, marker="o", color="tab:orange")
        axes[1, col].set_ylabel("kept fraction")
        axes[1, col].set_ylim(0, 1.05)
        axes[1, col].set_xlabel(label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def image_grid(images: torch.Tensor, mean: Any, std: Any, path: Path, title: str) -> None:
    """Save a grid of (normalised) images after undoing the normalisation."""
    x = images.detach().float().cpu()
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = (x * s + m).clamp(0, 1)
    grid = make_grid(x, nrow=int(np.ceil(np.sqrt(len(x)))), padding=2, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(grid.permute(1, 2, 0).numpy())
    ax.set_axis_off()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
