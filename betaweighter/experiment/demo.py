"""`betaweighter demo`: a short `compare` on the embedded demo set.

The demo config (a small conv net, rotation prediction on digits mixed with photo patches,
BDW weights judged by few-shot episodes of labelled digits, CDF pruning) run as its three
variants: the baseline without weights, weights with pruning, and weights with random
pruning of the same counts. One seed by default; ``--seeds 3`` gives intervals.
"""

from __future__ import annotations

from pathlib import Path

from betaweighter.experiment.compare import CompareResult, compare, verdict
from betaweighter.experiment.config import Config, load_config
from betaweighter.experiment.shipped import config_file

__all__ = ["demo_config", "run_demo"]


def demo_config(overrides: list[str] | None = None) -> Config:
    """The shipped demo config (package data), with `overrides` applied."""
    with config_file("demo") as path:
        return load_config(path, overrides)


def run_demo(out: str | Path = "runs", overrides: list[str] | None = None,
             seeds: int = 1) -> CompareResult:
    """Run the demo comparison, print its table and return it."""
    result = compare(demo_config(overrides), range(seeds), out)
    print(result.format())
    print(verdict(result))
    print(f"plots and runs: {result.directory}")
    return result
