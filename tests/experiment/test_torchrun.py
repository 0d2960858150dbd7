"""Under torchrun: the command line and the example run as two processes (gloo, CPU), rank
0 alone writes, and the weights stay identical on every process (the trainer compares a
checksum after every epoch and fails otherwise)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY

ROOT = Path(__file__).resolve().parents[2]


def _torchrun(args: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BETAWEIGHTER_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def _run_args(tmp_path: Path, extra: list[str]) -> list[str]:
    args = ["-m", "betaweighter", "run", "demo", "--out", str(tmp_path / "runs")]
    for item in extra:
        args += ["--set", item]
    return args


def test_torchrun_trains_one_run_written_by_rank_zero(tmp_path):
    out = _torchrun(_run_args(tmp_path, TINY + ["train.epochs=1", "experiment.name=ddp"]),
                    tmp_path)
    runs = list((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["ddp"]  # one directory, not one per process
    rows = list(csv.DictReader(open(runs[0] / "metrics.csv")))
    assert len(rows) == 1 and int(rows[0]["images_seen"]) == 3 * 16  # per process
    assert out.stdout.count("run ddp finished") == 1
    assert json.loads((runs[0] / "summary.json").read_text())["epochs"] == 1


@pytest.mark.slow
def test_a_torchrun_run_resumed_under_torchrun_ends_like_an_uninterrupted_one(tmp_path):
    """Resume works under DDP: 2 epochs in one go against 1 epoch, then --resume for the
    second (the same two processes' shards, episodes and pruning decisions)."""
    _torchrun(_run_args(tmp_path, TINY + ["experiment.name=whole"]), tmp_path)
    _torchrun(_run_args(tmp_path, TINY + ["experiment.name=split", "train.epochs=1"]),
              tmp_path)
    split = tmp_path / "runs" / "split"
    _torchrun(["-m", "betaweighter", "run", "--resume", str(split), "--set",
               "train.epochs=2"], tmp_path)

    def rows(run):
        return [{k: v for k, v in r.items() if k != "epoch_seconds"}
                for r in csv.DictReader(open(run / "metrics.csv"))]

    whole = tmp_path / "runs" / "whole"
    assert len(rows(whole)) == 2 and rows(split) == rows(whole)
    assert (split / "weights.csv").read_text() == (whole / "weights.csv").read_text()


@pytest.mark.slow
def test_torchrun_smoke_run_of_the_demo_config(tmp_path):
    _torchrun(_run_args(tmp_path, ["train.epochs=2", "experiment.name=demo-ddp"]), tmp_path,
              timeout=1800)
    run = tmp_path / "runs" / "demo-ddp"
    for name in ("summary.json", "weights.csv", "checkpoints/last.pt", "plots/curves.png"):
        assert (run / name).is_file(), name


@pytest.mark.slow
def test_torchrun_runs_the_custom_loop_example(tmp_path):
    out = _torchrun([str(ROOT / "examples" / "custom_loop.py")], tmp_path)
    lines = [line for line in out.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2  # printed by rank 0 only


@pytest.mark.parametrize("config", [
    "demo/mae",
    # SwAV's global Sinkhorn is checked fast by tests/pretext/test_distributed_pretexts.py
    pytest.param("demo/swav", marks=pytest.mark.slow)])
def test_torchrun_trains_masked_prediction_and_clustering(config, tmp_path):
    """MAE (each process masks with its own generator; DDP averages the gradients) and SwAV
    (Sinkhorn over the global batch) under torchrun, with BDW and pruning: one run, written
    by rank 0, whose weights the trainer checks are identical on both processes."""
    name = config.split("/")[1]
    args = ["-m", "betaweighter", "run", config, "--out", str(tmp_path / "runs")]
    for item in [o for o in TINY if not o.startswith(("model.", "data."))] + [
            "train.epochs=1", "train.batch_size=8", "model.blocks=1",
            f"experiment.name={name}"]:
        args += ["--set", item]
    _torchrun(args, tmp_path)
    summary = json.loads((tmp_path / "runs" / name / "summary.json").read_text())
    assert summary["pretext"] == name and summary["method"] == "bdw"
    assert summary["kept_fraction"] < 1.0  # pruning decided on the shared weights
