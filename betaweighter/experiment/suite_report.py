"""The table of a suite: models x tasks, ranks, a heat map and rank correlations.

Following the analysis of *How Well Do Self-Supervised Models Transfer?* (Ericsson, Gouk and
Hospedales, arXiv:2011.13377), every task ranks the models by its headline number (1 =
best; every headline here is higher-is-better; ties share the mean rank), each model gets
its mean rank over the tasks it has a number for, and each pair of tasks gets the Spearman
(rank) and Pearson (linear) correlation of its numbers across the models that have both
(``scipy.stats.spearmanr`` and ``pearsonr``): do the tasks agree on which models transfer
best? A correlation needs at least 3 models and numbers that vary; otherwise it is
reported as undefined, with the reason, never as NaN.

Files written to the suite's output folder (atomically): ``results.csv`` and
``results.json`` (the values), ``ranks.md`` and ``ranks.csv`` (the ranked table),
``correlations.csv``, ``heatmap.png`` (values, coloured by rank within each task) and,
with correlations defined, ``correlations.png``.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from betaweighter.experiment.suite_spec import Suite
from betaweighter.io import atomic_write_bytes, atomic_write_text, write_json

__all__ = ["SuiteReport", "mean_ranks", "task_correlations", "task_ranks", "write_report"]

MIN_MODELS = 3  # the fewest models a correlation is defined for


@dataclass
class SuiteReport:
    """The numbers of a suite's table, the printed text and the files written."""

    models: list[str]
    tasks: list[str]
    values: np.ndarray            # (models, tasks), NaN where a cell has no number
    ranks: np.ndarray             # (models, tasks), NaN where a cell has no number
    mean_rank: np.ndarray         # (models,), NaN for a model without any number
    correlations: list[dict[str, Any]]
    text: str
    files: dict[str, Path] = field(default_factory=dict)


def task_ranks(values: np.ndarray) -> np.ndarray:
    """Per column, the rank of each model among those with a number (1 = highest; ties
    get the mean of their ranks); NaN where there is no number."""
    values = np.asarray(values, dtype=float)
    ranks = np.full(values.shape, np.nan)
    for j in range(values.shape[1]):
        have = ~np.isnan(values[:, j])
        if have.any():
            ranks[have, j] = stats.rankdata(-values[have, j], method="average")
    return ranks


def mean_ranks(ranks: np.ndarray) -> np.ndarray:
    """Each model's mean rank over the tasks it has a rank for (NaN for none)."""
    ranks = np.asarray(ranks, dtype=float)
    have = ~np.isnan(ranks)
    total = np.where(have, ranks, 0.0).sum(1)
    count = have.sum(1)
    return np.divide(total, count, out=np.full(len(ranks), np.nan), where=count > 0)


def task_correlations(values: np.ndarray, tasks: list[str]) -> list[dict[str, Any]]:
    """For every pair of tasks: the models both have numbers for (``n``), and Spearman's
    rho and Pearson's r with their two-sided p-values, or ``undefined`` saying why."""
    values = np.asarray(values, dtype=float)
    out = []
    for a in range(len(tasks)):
        for b in range(a + 1, len(tasks)):
            both = ~np.isnan(values[:, a]) & ~np.isnan(values[:, b])
            x, y = values[both, a], values[both, b]
            row: dict[str, Any] = {"task_a": tasks[a], "task_b": tasks[b], "n": int(both.sum()),
                                   "spearman": None, "spearman_p": None, "pearson": None,
                                   "pearson_p": None, "undefined": None}
            if row["n"] < MIN_MODELS:
                row["undefined"] = (f"{row['n']} models with both numbers; a correlation "
                                    f"needs at least {MIN_MODELS}")
            elif np.ptp(x) == 0 or np.ptp(y) == 0:
                constant = tasks[a] if np.ptp(x) == 0 else tasks[b]
                row["undefined"] = f"every model has the same number on {constant}"
            else:
                s, p = stats.spearmanr(x, y), stats.pearsonr(x, y)
                row.update(spearman=float(s.statistic), spearman_p=float(s.pvalue),
                           pearson=float(p.statistic), pearson_p=float(p.pvalue))
            out.append(row)
    return out


def write_report(out: Path, suite: Suite, values: dict[tuple[str, str], float | None],
                 skipped: dict[tuple[str, str], str] | None = None) -> SuiteReport:
    """Write the table files of a suite from its cells' headline numbers (`values`, None
    for a cell without one; `skipped` gives the reason of a not-applicable cell)."""
    skipped = skipped or {}
    models = [m.name for m in suite.models]
    tasks = [t.name for t in suite.tasks]
    grid = np.array([[math.nan if (v := values.get((m, t))) is None else float(v)
                      for t in tasks] for m in models], dtype=float).reshape(len(models),
                                                                             len(tasks))
    ranks = task_ranks(grid)
    mean = mean_ranks(ranks)
    correlations = task_correlations(grid, tasks)
    report = SuiteReport(models, tasks, grid, ranks, mean, correlations, "")
    order = sorted(range(len(models)), key=lambda i: (np.isnan(mean[i]), mean[i], i))
    files = report.files
    files["results.csv"] = atomic_write_text(out / "results.csv", _csv(
        ["model", *tasks], [[m, *(_num(v) for v in grid[i])] for i, m in enumerate(models)]))
    files["results.json"] = write_json(out / "results.json", {
        "models": models,
        "tasks": [{"name": t.name, "protocol": t.protocol, "headline": t.headline}
                  for t in suite.tasks],
        "values": {m: {t: _value(grid[i, j]) for j, t in enumerate(tasks)}
                   for i, m in enumerate(models)},
        "not_applicable": {m: {t: skipped[m, t] for t in tasks if (m, t) in skipped}
                           for m in models if any((m, t) in skipped for t in tasks)},
        "ranks": {m: {t: _value(ranks[i, j]) for j, t in enumerate(tasks)}
                  for i, m in enumerate(models)},
        "mean_rank": {m: _value(mean[i]) for i, m in enumerate(models)},
        "correlations": correlations,
        "correlations_note": _note(len(models))})
    table = _ranked_rows(order, models, tasks, grid, ranks, mean)
    files["ranks.csv"] = atomic_write_text(out / "ranks.csv", _csv(table[0], table[1:]))
    markdown = _markdown(table)
    files["ranks.md"] = atomic_write_text(out / "ranks.md", markdown + "\n")
    files["correlations.csv"] = atomic_write_text(out / "correlations.csv", _csv(
        list(correlations[0]) if correlations else ["task_a", "task_b"],
        [["" if v is None else v for v in row.values()] for row in correlations]))
    files["heatmap.png"] = _heatmap(out / "heatmap.png", models, tasks, grid, ranks)
    defined = [c for c in correlations if c["undefined"] is None]
    if defined:
        files["correlations.png"] = _correlation_plot(out / "correlations.png", tasks,
                                                      correlations)
    report.text = markdown + "\n\n" + _correlation_text(correlations, len(models))
    return report


def _value(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _num(x: float) -> str:
    return "" if np.isnan(x) else repr(float(x))


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _ranked_rows(order: list[int], models: list[str], tasks: list[str], grid: np.ndarray,
                 ranks: np.ndarray, mean: np.ndarray) -> list[list[str]]:
    rows = [["place", "model", "mean rank", *[f"{t} (rank)" for t in tasks]]]
    for place, i in enumerate(order, 1):
        cells = ["n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.4f} ({ranks[i, j]:g})"
                 for j in range(len(tasks))]
        rows.append([str(place), models[i], "n/a" if np.isnan(mean[i]) else f"{mean[i]:.2f}",
                     *cells])
    return rows


def _markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _note(n_models: int) -> str | None:
    if n_models < MIN_MODELS:
        return (f"rank correlations between tasks are undefined with fewer than {MIN_MODELS} "
                f"models ({n_models} in this suite)")
    return None


def _correlation_text(correlations: list[dict[str, Any]], n_models: int) -> str:
    note = _note(n_models)
    if note:
        return note
    if not correlations:
        return "rank correlations between tasks: a suite of one task has none"
    lines = ["rank correlations between tasks (across models):"]
    for c in correlations:
        pair = f"  {c['task_a']} vs {c['task_b']}"
        if c["undefined"]:
            lines.append(f"{pair}: undefined ({c['undefined']})")
        else:
            lines.append(f"{pair}: Spearman {c['spearman']:+.3f} (p {c['spearman_p']:.3g}), "
                         f"Pearson {c['pearson']:+.3f} (p {c['pearson_p']:.3g}), n {c['n']}")
    return "\n".join(lines)


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(path, buffer.getvalue())


def _heatmap(path: Path, models: list[str], tasks: list[str], grid: np.ndarray,
             ranks: np.ndarray) -> Path:
    """Each cell's number, coloured by its rank within the task (tasks have different
    scales; the rank is what they share)."""
    fig = Figure(figsize=(1.6 + 1.3 * len(tasks), 1.2 + 0.5 * len(models)))
    ax = fig.subplots()
    shade = np.where(np.isnan(ranks), np.nan, (ranks - 1) / max(1, len(models) - 1))
    image = ax.imshow(shade, cmap="viridis_r", vmin=0, vmax=1, aspect="auto")
    for i in range(len(models)):
        for j in range(len(tasks)):
            ax.text(j, i, "n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.3f}",
                    ha="center", va="center", fontsize=8,
                    color="black" if np.isnan(shade[i, j]) or shade[i, j] > 0.5 else "white")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(models)), models)
    ax.set_title("transfer suite: headline number per task (colour: rank in the task)")
    fig.colorbar(image, ax=ax, label="rank (0 = best, 1 = worst)")
    fig.tight_layout()
    return _save(fig, path)


def _correlation_plot(path: Path, tasks: list[str], correlations: list[dict[str, Any]]) -> Path:
    """Spearman's rho between every pair of tasks (blank where undefined)."""
    k = len(tasks)
    rho = np.eye(k)
    for c in correlations:
        a, b = tasks.index(c["task_a"]), tasks.index(c["task_b"])
        rho[a, b] = rho[b, a] = np.nan if c["spearman"] is None else c["spearman"]
    fig = Figure(figsize=(1.8 + 0.9 * k, 1.4 + 0.8 * k))
    ax = fig.subplots()
    image = ax.imshow(rho, cmap="coolwarm", vmin=-1, vmax=1)
    for a in range(k):
        for b in range(k):
            ax.text(b, a, "" if np.isnan(rho[a, b]) else f"{rho[a, b]:+.2f}", ha="center",
                    va="center", fontsize=8)
    ax.set_xticks(range(k), tasks, rotation=30, ha="right")
    ax.set_yticks(range(k), tasks)
    ax.set_title("Spearman rank correlation between tasks")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return _save(fig, path)
