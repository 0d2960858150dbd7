"""Read a `betaweighter compare` directory and print the weighting targets, one JSON line
each: the AUROC of the weights at an epoch, what was pruned by kind, test accuracy
against the baseline and the controls, and the time to the baseline's final accuracy.

    betaweighter compare mixture --seeds 3 --out runs
    python benchmarks/weighting_targets.py runs/mixture-compare --epoch 5

Every number is a mean with its 95 % Student-t interval over the seeds, from the files the
runs wrote (metrics.csv, summary.json); nothing is recomputed, so the lines can be
checked against the run directories by hand.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from betaweighter.experiment.compare import confidence_interval
from betaweighter.experiment.rundir import RunDir


def _num(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _ci(values: list[float]) -> list[float]:
    mean, half = confidence_interval(values)
    return [round(mean, 4), round(half, 4) if math.isfinite(half) else None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("compare_dir", type=Path)
    p.add_argument("--epoch", type=int, default=5, help="epoch of the AUROC target")
    args = p.parse_args()
    saved = json.loads((args.compare_dir / "compare.json").read_text())
    runs = saved["runs"]
    for variant, items in runs.items():
        metrics = [RunDir(r["run_dir"]).metrics() for r in items]
        at = [m[args.epoch - 1] if len(m) >= args.epoch else {} for m in metrics]
        last = [m[-1] for m in metrics]
        row = {"case": "weights", "variant": variant, "seeds": len(items),
               f"auroc_epoch{args.epoch}": _ci([_num(r.get("auroc_in_domain")) for r in at]),
               "auroc_final": _ci([_num(r.get("auroc_in_domain")) for r in last]),
               "kept_fraction": _ci([_num(r.get("kept_fraction")) for r in last])}
        kinds = sorted(k[len("pruned_"):] for k in last[0]
                       if k.startswith("pruned_") and k not in
                       ("pruned_in_domain", "pruned_in_domain_share"))
        for kind in kinds:
            row[f"pruned_{kind}"] = _ci([_num(r.get(f"pruned_{kind}")) for r in last])
        for key in ("test_accuracy", "final_test_accuracy", "train_seconds",
                    "seconds_to_baseline"):
            row[key] = _ci([_num(r.get(key) if key == "seconds_to_baseline"
                                 else r["summary"].get(key)) for r in items])
        print(json.dumps(row))
    table = {r["variant"]: r for r in saved["table"]}
    if "rotnet" in table:
        base = table["rotnet"]["train_seconds"][0]
        for variant, r in table.items():
            print(json.dumps({"case": "time", "variant": variant,
                              "seconds_to_baseline_over_baseline_total":
                              round(r["seconds_to_baseline"][0] / base, 3),
                              "reached": r["reached_baseline"],
                              "train_seconds_over_baseline": round(
                                  r["train_seconds"][0] / base, 3)}))


if __name__ == "__main__":
    main()
