"""Plots of invariance tables: a curve per transform and a bar chart of the scores.

The curves show the similarity at every parameter value (x: the table's ``level``: the
angle, the factor, the shift as a fraction of the side...), one line per model, as the
per-transform figures of Ericsson, Gouk and Hospedales (arXiv:2111.11398); the bar chart
shows each transform's summary score, one bar per model. Drawn with matplotlib's object
API (no GUI backend is touched).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from betaweighter.evaluate.invariance_table import InvarianceTable
from betaweighter.experiment.plots import save_figure

__all__ = ["plot_invariance"]

KINDS = ("curve", "bar")


def plot_invariance(tables: InvarianceTable | Mapping[str, InvarianceTable],
                    path: str | Path, kind: str = "curve", title: str | None = None) -> Path:
    """Draw one table, or a mapping ``{label: table}`` compared side by side, as curves or
    bars, into the PNG file `path`. Returns the path."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(tables, InvarianceTable):
        tables = {"model": tables}
    if not tables:
        raise ValueError("no invariance table to plot")
    names = list(dict.fromkeys(t for table in tables.values() for t in table.transforms))
    fig = _curves(tables, names) if kind == "curve" else _bars(tables, names)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    return path


def _curves(tables: Mapping[str, InvarianceTable], names: list[str]) -> Figure:
    cols = min(6, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(2.6 * cols, 2.2 * rows + 0.4))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        for label, table in tables.items():
            if name not in table.transforms:
                continue
            x, y = table.curve(name)
            ax.plot(x, y, marker="o" if len(x) <= 8 else None, markersize=3, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.05)
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.tick_params(labelsize=7)
    for ax in axes[len(names):]:
        ax.set_axis_off()
    if len(tables) > 1:
        axes[0].legend(fontsize=7)
    fig.supylabel("similarity (Mahalanobis cosine)", fontsize=9)
    return fig


def _bars(tables: Mapping[str, InvarianceTable], names: list[str]) -> Figure:
    fig = Figure(figsize=(min(16.0, 1.5 + len(names) * (0.25 + 0.12 * len(tables))), 4.0))
    ax = fig.subplots()
    width = 0.8 / len(tables)
    x = np.arange(len(names))
    for i, (label, table) in enumerate(tables.items()):
        scores = {r["transform"]: r["similarity"] for r in table.summary()}
        ax.bar(x + (i - (len(tables) - 1) / 2) * width,
               [scores.get(n, math.nan) for n in names], width, label=label)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("similarity (mean over parameters)")
    ax.axhline(0.0, color="grey", lw=0.5)
    if len(tables) > 1:
        ax.legend(fontsize=8, ncols=min(len(tables), 4))
    return fig
