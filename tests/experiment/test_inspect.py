"""`betaweighter weights RUN`: the verdict reads what the weights separate from the run's
metrics.csv, at the checkpoint's epoch, without building the data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from helpers import TINY

from betaweighter.checkpoint import save_checkpoint
from betaweighter.experiment.config import dump_config, load_config
from betaweighter.experiment.factory import build_weights
from betaweighter.experiment.inspect import epoch_row, read_weights

N = 50


def _run_dir(root: Path, metrics: list[dict[str, str]], epochs: dict[str, int]) -> Path:
    """A run directory as the trainer leaves it: config.yaml, metrics.csv and checkpoints
    (``which -> epoch``) whose Beta weights have spread (20% confidently low)."""
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(load_config(overrides=TINY)))
    from betaweighter.experiment.rundir import RunDir

    cfg = RunDir(run).config()
    weights = build_weights(cfg, N)
    means = np.r_[np.full(10, 0.02), np.full(40, 0.6)]
    with torch.no_grad():
        weights.log_alpha.copy_(torch.log(torch.as_tensor(means * 200)))
        weights.log_beta.copy_(torch.log(torch.as_tensor((1 - means) * 200)))
    for which, epoch in epochs.items():
        save_checkpoint(run / "checkpoints" / f"{which}.pt", {
            "epoch": epoch, "epoch_step": 0, "config": cfg.to_dict(), "model": {},
            "weights": weights.state_dict(), "rng": {}, "num_instances": N,
            "pruner": {"pruned": np.arange(N) < 5}})
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(metrics[0]))
        writer.writeheader()
        writer.writerows(metrics)
    return run


def test_the_verdict_reads_the_checkpoints_epoch_of_metrics(tmp_path):
    rows = [{"epoch": "1", "auroc_in_domain": "0.52", "auroc_noise": "0.55",
             "pruned_in_domain_share": "nan"},
            {"epoch": "2", "auroc_in_domain": "0.88", "auroc_noise": "0.97",
             "pruned_in_domain_share": "0.1"}]
    run = _run_dir(tmp_path, rows, {"last": 2, "best": 1})
    table, text = read_weights(run)
    assert table.count("\n") == N + 1 and table.splitlines()[1].endswith(",1")  # pruned
    assert text.startswith("weights have spread: 20.0% of the pool is confidently low")
    assert "in-domain vs out-of-domain AUROC 0.88 (per kind: noise 0.97)" in text
    assert "10% of what was pruned is in-domain" in text and "separated" not in text
    _, best = read_weights(run, "best")
    assert "do not separate" in best and "AUROC 0.52 (per kind: noise 0.55)" in best


def test_an_unknown_domain_says_spread_is_not_separation(tmp_path):
    rows = [{"epoch": "1", "auroc_in_domain": "nan", "pruned_in_domain_share": "nan"}]
    _, text = read_weights(_run_dir(tmp_path, rows, {"last": 1}))
    assert "Spread alone does not show that they separate useful data" in text
    assert "data.options.domains" in text and "separated" not in text


def test_epoch_row():
    rows = [{"epoch": "1", "a": "x"}, {"epoch": "2", "a": "y"}]
    assert epoch_row(rows, 2)["a"] == "y" and epoch_row(rows, 1)["a"] == "x"
    assert epoch_row(rows, 0) is None and epoch_row([], 3) is None


def test_a_damaged_metrics_file_still_gives_the_weights(tmp_path):
    rows = [{"epoch": "1", "auroc_in_domain": "0.9", "pruned_in_domain_share": "nan"}]
    run = _run_dir(tmp_path, rows, {"last": 1})
    (run / "metrics.csv").write_bytes(bytes(range(256)) * 4)
    table, text = read_weights(run)
    assert table.count("\n") == N + 1 and "no readable row for this epoch" in text
