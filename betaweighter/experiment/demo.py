"""`betaweighter demo`: BDW against its two controls on the embedded demo set.

Three runs of the same recipe: BDW with CDF pruning; RotNet (no weights, no pruning);
and BDW with *random* pruning of as many instances per epoch as the BDW run pruned, the
control that separates "pruning the right images" from "pruning some images".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from betaweighter.experiment.config import Config, load_config
from betaweighter.experiment.metrics import read_metrics
from betaweighter.experiment.trainer import Trainer

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def demo_config(overrides: list[str] | None = None) -> Config:
    if not DEMO_CONFIG.is_file():
        raise FileNotFoundError(f"the demo config {DEMO_CONFIG} is missing: run the demo from "
                                "a source checkout of betaweighter (pip install -e .)")
    return load_config(DEMO_CONFIG, overrides)


def run_demo(out: str | Path = "runs", overrides: list[str] | None = None) -> list[dict]:
    """Run the three demo variants and print the comparison table. Returns the summaries."""
    base = list(overrides or []) + [f"experiment.output_root={out}"]
    bdw = _run(demo_config(base))
    counts = [int(r["pruned"] or 0) for r in read_metrics(Path(bdw["run_dir"]) / "metrics.csv")]
    rotnet = _run(demo_config(base + ["experiment.name=demo-rotnet", "weights.method=rotnet",
                                      "pruning.enabled=false"]))
    random = _run(demo_config(base + ["experiment.name=demo-random-prune", "pruning.rule=random",
                                      f"pruning.control={counts}"]))
    rows = [("BDW + CDF pruning", bdw), ("RotNet", rotnet), ("BDW + random pruning", random)]
    print(table(rows))
    print("plots: " + ", ".join(str(Path(s["run_dir"]) / "plots") for _, s in rows))
    return [s for _, s in rows]


def _run(cfg: Config) -> dict[str, Any]:
    trainer = Trainer.start(cfg)
    return {**trainer.run(), "run_dir": str(trainer.run_dir)}


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    head = ("method", "test acc", "kept", "in-domain share of pruned", "train time")
    lines = [head]
    for name, s in rows:
        share = s.get("pruned_in_domain_share")
        lines.append((name, f"{100 * s['test_accuracy']:.1f}%", f"{s['kept_fraction']:.2f}",
                      "-" if share is None else f"{100 * share:.0f}%",
                      f"{s['train_seconds']:.0f} s"))
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
