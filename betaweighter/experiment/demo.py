"""`betaweighter demo`: BDW against its two controls on the embedded demo set.

Three runs of the same recipe: BDW with CDF pruning; RotNet (no weights, no pruning);
and BDW with *random* pruning of as many instances per epoch as the BDW run pruned, the
control that separates "pruning the right images" from "pruning some images".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from betaweighter.experiment.config import Config, load_config
from betaweighter.experiment.rundir import RunDir
from betaweighter.experiment.shipped import config_file
from betaweighter.experiment.trainer import Trainer

__all__ = ["demo_config", "run_demo", "table"]


def demo_config(overrides: list[str] | None = None) -> Config:
    """The shipped demo config (package data), with `overrides` applied."""
    with config_file("demo") as path:
        return load_config(path, overrides)


def run_demo(out: str | Path = "runs", overrides: list[str] | None = None) -> list[dict]:
    """Run the three demo variants and print the comparison table. Returns the summaries."""
    base = list(overrides or []) + [f"experiment.output_root={out}"]
    bdw = _run(demo_config(base))
    counts = [int(r["decided"] or 0) for r in RunDir(bdw["run_dir"]).metrics()]
    rotnet = _run(demo_config(base + ["experiment.name=demo-rotnet", "weights.method=rotnet",
                                      "pruning.enabled=false"]))
    random = _run(demo_config(base + ["experiment.name=demo-random-prune", "pruning.rule=random",
                                      f"pruning.control={counts}"]))
    rows = [("BDW + CDF pruning", bdw), ("RotNet", rotnet), ("BDW + random pruning", random)]
    print(table(rows))
    print("plots: " + ", ".join(str(Path(s["run_dir"]) / "plots") for _, s in rows))
    return [s for _, s in rows]


def _run(cfg: Config) -> dict[str, Any]:
    with Trainer.start(cfg) as trainer:
        return {**trainer.run(), "run_dir": str(trainer.run_dir)}


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    head = ("method", "test acc", "kept", "in-domain share of pruned", "train time")
    lines = [head]
    for name, s in rows:
        share = s.get("pruned_in_domain_share")
        lines.append((name, f"{100 * s['test_accuracy']:.1f}%", f"{float(s['kept_fraction']):.2f}",
                      "-" if share in (None, "") else f"{100 * float(share):.0f}%",
                      f"{s['train_seconds']:.0f} s"))
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
