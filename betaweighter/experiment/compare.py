"""``betaweighter compare``: does weighting pay? One config, its controls, several seeds.

For every seed, on the same data and budget:

* ``rotnet``: the pretext task alone (uniform weights, no pruning): the baseline;
* ``bdw``: the config as given (learned weights with pruning);
* ``random``: the same run, but the instances pruned are drawn at random, exactly as many
  per epoch as that seed's ``bdw`` run decided: "pruning the right images" against
  "pruning some images";
* ``nn``: the NN-Weighter (pixel distance to the nearest labelled target image, no
  meta-gradient) pruning its own lowest-weight instances, as many per epoch as ``bdw``
  did: the zero-cost baseline any meta-learned weighting must beat;
* ``shuffled``: the ``bdw`` run with each batch's meta-gradients permuted across its
  instances: weights that move as much, by noise alone. Pruning that this control matches
  follows noise.

The result is one table (mean and 95 % confidence interval over seeds, Student's t) of the
test accuracy of the best and of the final epoch's model, the training wall time, the
images seen, the wall time each variant needs to reach the baseline's final validation
accuracy, and, where the pool's domain is known, the AUROC of the mean weights and the
in-domain share of what was pruned; one plot of validation accuracy against wall time and
against images seen; and a verdict in words (`verdict`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from betaweighter.errors import ConfigError
from betaweighter.experiment.config import Config, load_config
from betaweighter.experiment.plots import save_figure
from betaweighter.experiment.rundir import RunDir, create_run_dir
from betaweighter.experiment.trainer import Trainer
from betaweighter.io import atomic_write_text, write_json

__all__ = ["CONTROLS", "VARIANTS", "CompareResult", "compare", "confidence_interval",
           "verdict"]

VARIANTS = ("rotnet", "bdw", "random", "nn", "shuffled")
#: the variants that need the bdw run (its per-epoch counts, or its config)
CONTROLS = ("random", "nn", "shuffled")
LABELS = {"rotnet": "baseline (no weights, no pruning)", "bdw": "weights + pruning",
          "random": "weights + random pruning (matched counts)",
          "nn": "NN-Weighter + pruning (matched counts)",
          "shuffled": "shuffled meta-gradients + pruning"}
METRICS = ("test_accuracy", "final_test_accuracy", "train_seconds", "images_seen",
           "seconds_to_baseline", "auroc_in_domain", "pruned_in_domain_share",
           "kept_fraction")


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of a Student-t interval over the finite values (NaN half-width
    with fewer than two)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


@dataclass
class CompareResult:
    """Per-variant, per-seed summaries and curves, and the table over seeds."""

    directory: Path
    seeds: list[int]
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)

    def format(self) -> str:
        """The table as aligned text (mean +- half-width)."""
        head = ["variant", "test acc, best (%)", "test acc, final (%)", "train time (s)",
                "time to baseline (s)", "kept", "AUROC in-domain", "in-domain share of pruned"]
        rows = [head]
        for r in self.table:
            rows.append([r["variant"], _fmt(r, "test_accuracy", 100, 1),
                         _fmt(r, "final_test_accuracy", 100, 1),
                         _fmt(r, "train_seconds", 1, 0),
                         _fmt(r, "seconds_to_baseline", 1, 0) + _reached(r),
                         _fmt(r, "kept_fraction", 1, 2),
                         _fmt(r, "auroc_in_domain", 1, 2),
                         _fmt(r, "pruned_in_domain_share", 1, 2)])
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        kinds = [r for r in self.table if r.get("by_kind")]
        if kinds:  # the pool's kinds are known: what each variant separates and prunes
            lines.append("by kind (mean over seeds): AUROC in-domain vs each kind; share of "
                         "each kind pruned")
            for r in kinds:
                parts = [f"{k.split('_', 1)[1]} {v[0]:.2f}" for k, v in r["by_kind"].items()
                         if k.startswith("auroc_") and math.isfinite(v[0])]
                pruned = [f"{k.split('_', 1)[1]} {v[0]:.0%}" for k, v in r["by_kind"].items()
                          if k.startswith("pruned_") and math.isfinite(v[0])]
                lines.append(f"  {r['variant']}: AUROC " + (", ".join(parts) or "-")
                             + "; pruned " + (", ".join(pruned) or "-"))
        return "\n".join(lines)


def _fmt(row: dict[str, Any], key: str, scale: float, digits: int) -> str:
    mean, half = row[key]
    if not math.isfinite(mean):
        return "-"
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {half * scale:.{digits}f}" if math.isfinite(half) else "")


def _reached(row: dict[str, Any]) -> str:
    n, total = row["reached_baseline"]
    return "" if n == total else f" ({n}/{total} reached)"


def compare(config: Config | str | Path, seeds: Sequence[int] = (0, 1, 2),
            out: str | Path = "runs", overrides: Sequence[str] = (),
            variants: Sequence[str] = VARIANTS) -> CompareResult:
    """Run `variants` of `config` for every seed and summarise (see the module docstring).

    The config must use learned weights with pruning enabled (the ``bdw`` variant); the
    runs go into a new directory ``out/<experiment name>-compare`` that holds
    ``compare.json``, ``compare.csv`` and ``compare.png``.
    """
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        raise ConfigError(f"unknown compare variants {unknown}; choose from {VARIANTS}")
    if set(CONTROLS) & set(variants) and "bdw" not in variants:
        raise ConfigError("the random, nn and shuffled controls match the bdw run: include "
                          "the bdw variant")
    cfg = config if isinstance(config, Config) else load_config(config, list(overrides))
    if not cfg.pruning.enabled or cfg.pruning.rule == "random":
        raise ConfigError("compare needs a config with pruning.enabled=true and a pruning rule "
                          "other than random (the bdw variant); set pruning.enabled=true")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("compare needs at least one seed: give --seeds N with N >= 1")
    root = Path(out).expanduser()
    fresh_root = not root.exists()
    directory = create_run_dir(root, f"{cfg.experiment.name}-compare", run_folders=False)
    result = CompareResult(directory, seeds)
    try:
        _run_variants(cfg, result, variants)
    except BaseException:
        # a comparison that could not start its first run leaves no directory behind
        if not any(directory.iterdir()):
            directory.rmdir()
            if fresh_root and not any(root.iterdir()):
                root.rmdir()
        raise
    _summarise(result)
    _write(result)
    return result


def _run_variants(cfg: Config, result: CompareResult, variants: Sequence[str]) -> None:
    """Every variant for every seed of `result`, appended to ``result.runs``."""
    directory = result.directory
    for seed in result.seeds:
        counts = None
        for variant in [v for v in VARIANTS if v in variants]:
            extra = [f"experiment.seed={seed}", f"experiment.output_root={directory}",
                     f"experiment.name={variant}-s{seed}"]
            if variant == "rotnet":
                extra += ["weights.method=rotnet", "weights.options={}",
                          "pruning.enabled=false"]
            elif variant == "random":
                extra += ["pruning.rule=random", f"pruning.control={counts}"]
            elif variant == "nn":
                extra += ["weights.method=nn", "weights.options={}", "pruning.rule=lowest",
                          f"pruning.control={counts}"]
            elif variant == "shuffled":
                extra += ["meta.shuffle_meta_gradients=true"]
            run_cfg = load_config(base=cfg.to_dict(), overrides=extra)
            with Trainer.start(run_cfg) as trainer:
                summary = trainer.run()
                run_dir = trainer.run_dir
            assert summary is not None  # one process, no stop_after: run() returns it
            rows = RunDir(run_dir).metrics()
            if variant == "bdw":
                counts = [int(r["decided"] or 0) for r in rows]
            result.runs.setdefault(variant, []).append(
                {"seed": seed, "run_dir": str(run_dir), "summary": summary,
                 "curve": _curve(rows, summary["train_seconds"])})


def verdict(result: CompareResult) -> str:
    """One sentence per question, in words: did the weighted run beat plain training and
    each control (test accuracy of the final model, 95 % intervals over seeds), and at what
    time cost. It says so when it did not."""
    rows = {r["variant"]: r for r in result.table}
    if "bdw" not in rows:
        return "no weighted run to judge"
    w = rows["bdw"]
    lines = []
    for other in ("rotnet", "random", "nn", "shuffled"):
        if other in rows:
            lines.append(f"against {LABELS[other]}: {_against(w, rows[other])}")
    if "rotnet" in rows:
        ratio = w["train_seconds"][0] / rows["rotnet"]["train_seconds"][0]
        lines.append(f"time: {ratio:.2f}x the baseline's training time, "
                     f"{w['kept_fraction'][0]:.0%} of the pool kept at the end")
    return "verdict: weights + pruning " + "; ".join(lines)


def _against(a: dict[str, Any], b: dict[str, Any], key: str = "final_test_accuracy") -> str:
    (ma, ha), (mb, hb) = a[key], b[key]
    if not (math.isfinite(ma) and math.isfinite(mb)):
        return "not measured"
    diff = f"{100 * ma:.1f} vs {100 * mb:.1f} % test accuracy"
    if not (math.isfinite(ha) and math.isfinite(hb)):
        word = "higher" if ma > mb else "lower" if ma < mb else "equal"
        return f"{word} ({diff}; one seed, no interval: run --seeds 3 to judge)"
    if ma - ha > mb + hb:
        return f"better ({diff}, intervals apart)"
    if ma + ha < mb - hb:
        return f"WORSE ({diff}, intervals apart)"
    return f"no clear difference ({diff}, intervals overlap)"


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _curve(rows: list[dict[str, str]], total: float) -> dict[str, list[float]]:
    """Per-epoch curves; the wall time starts with what training spent before its first
    epoch (the weights' fit), so that the curve ends at the run's training time."""
    def num(r: dict[str, str], k: str) -> float:
        v = r.get(k)
        return float(v) if v not in (None, "") else math.nan

    epochs = np.array([num(r, "epoch_seconds") for r in rows])
    before = max(0.0, total - float(epochs.sum())) if math.isfinite(total) else 0.0
    return {"epoch": [num(r, "epoch") for r in rows],
            "wall": (before + np.cumsum(epochs)).tolist(),
            "images": [num(r, "images_seen") for r in rows],
            "val_accuracy": [num(r, "val_accuracy") for r in rows]}


def _seconds_to(curve: dict[str, list[float]], goal: float) -> float:
    for wall, acc in zip(curve["wall"], curve["val_accuracy"]):
        if math.isfinite(acc) and acc >= goal - 1e-12:
            return float(wall)
    return math.nan


def _summarise(result: CompareResult) -> None:
    baseline = result.runs.get("rotnet") or next(iter(result.runs.values()))
    goal = float(np.nanmean([run["curve"]["val_accuracy"][-1] for run in baseline]))
    result.table = []
    for variant, runs in result.runs.items():
        values: dict[str, list[float]] = {k: [] for k in METRICS}
        for run in runs:
            s = run["summary"]
            run["seconds_to_baseline"] = _seconds_to(run["curve"], goal)
            for key in METRICS:
                v = run["seconds_to_baseline"] if key == "seconds_to_baseline" else s.get(key)
                values[key].append(float(v) if v is not None else math.nan)
        row: dict[str, Any] = {"variant": variant, "label": LABELS[variant],
                               "baseline_val_accuracy": goal}
        row.update({k: confidence_interval(v) for k, v in values.items()})
        names = dict.fromkeys(k for run in runs for k in (run["summary"].get("by_kind") or {}))
        row["by_kind"] = {k: confidence_interval([_number((run["summary"].get("by_kind") or {})
                                                          .get(k)) for run in runs])
                          for k in names}
        reached = sum(math.isfinite(v) for v in values["seconds_to_baseline"])
        row["reached_baseline"] = (reached, len(runs))
        result.table.append(row)


def _write(result: CompareResult) -> None:
    d = result.directory
    write_json(d / "compare.json", {"seeds": result.seeds, "table": result.table,
                                    "runs": result.runs})
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["variant"] + [f"{k}_{p}" for k in METRICS for p in ("mean", "ci95")])
    for row in result.table:
        w.writerow([row["variant"]] + [f"{v:.6g}" for k in METRICS for v in row[k]])
    atomic_write_text(d / "compare.csv", out.getvalue())
    _plot(result, d / "compare.png")


def _plot(result: CompareResult, path: Path) -> None:
    kinds = sorted({k for r in result.table for k in r.get("by_kind", {})
                    if k.startswith("pruned_")})
    fig = Figure(figsize=(16 if kinds else 11, 4.2))
    axes = fig.subplots(1, 3 if kinds else 2)
    if kinds:
        _plot_kinds(axes[2], result, kinds)
        axes = axes[:2]
        axes[1].sharey(axes[0])
    for variant, runs in result.runs.items():
        acc = np.array([r["curve"]["val_accuracy"] for r in runs], np.float64)
        mean = np.nanmean(acc, axis=0)
        half = np.array([confidence_interval(col)[1] for col in acc.T])
        for ax, key in zip(axes, ("wall", "images")):
            x = np.nanmean(np.array([r["curve"][key] for r in runs], np.float64), axis=0)
            ax.plot(x, mean, marker="o", label=LABELS[variant])
            if np.isfinite(half).any():
                ax.fill_between(x, mean - np.nan_to_num(half), mean + np.nan_to_num(half),
                                alpha=0.2)
    axes[0].set_xlabel("training wall time (s)")
    axes[1].set_xlabel("images seen")
    axes[0].set_ylabel("validation accuracy (linear probe)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"mean and 95% CI over {len(result.seeds)} seed(s)")
    fig.tight_layout()
    save_figure(fig, path)


def _plot_kinds(ax: Any, result: CompareResult, kinds: list[str]) -> None:
    """Share of each kind of the pool pruned, per variant (mean over seeds)."""
    rows = [r for r in result.table if r.get("by_kind")]
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        values = [r["by_kind"].get(k, (math.nan, math.nan))[0] for k in kinds]
        ax.bar(np.arange(len(kinds)) + i * width, np.nan_to_num(values), width,
               label=r["variant"])
    ax.set_xticks(np.arange(len(kinds)) + width * (len(rows) - 1) / 2,
                  [k.split("_", 1)[1] for k in kinds], rotation=30, fontsize=8)
    ax.set_ylabel("share of the kind pruned")
    ax.legend(fontsize=7)
