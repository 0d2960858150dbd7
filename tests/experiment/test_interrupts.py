"""Interrupts and the end of a run: SIGINT or SIGTERM at a random step of an epoch, then a
resume, ends bitwise like an uninterrupted run, with and without DataLoader workers; a run
stopped or failed after its last checkpoint is finished by a resume; under torchrun a
mistake is one line from rank 0, and every rank exits 2.

The signals are real (`os.kill` of this process from a step hook, handled by the trainer's
own handler), in-process to keep the tests fast; test_faults.py runs the command line.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, launch_two_ranks, one_thread  # noqa: F401 (a fixture)
from ondisk import write_image_folder

import betaweighter.experiment.trainer as trainer_module
from betaweighter.errors import ConfigError
from betaweighter.experiment.config import load_config
from betaweighter.experiment.interrupt import Interrupted
from betaweighter.experiment.trainer import Trainer

STEPS = 3  # TINY: 2 epochs of 3 steps
#: curves.png is left out: it plots against wall time
PLOTS = ["weight_histograms.png", "diagnostics.png", "losses.png", "highest_weighted.png",
         "lowest_weighted.png"]


def _config(root: Path, *extra: str):
    return load_config(overrides=TINY + [f"experiment.output_root={root}", "experiment.name=r",
                                         *extra])


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in csv.DictReader(f)]


def _summary(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    summary.pop("train_seconds")  # wall time: an interrupted run measures other seconds
    return summary


def assert_same_run(run: Path, reference: Path) -> None:
    """Bitwise the same metrics, weights, model, summary and plots (timings aside)."""
    assert _rows(run) == _rows(reference)
    assert (run / "weights.csv").read_bytes() == (reference / "weights.csv").read_bytes()
    a = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert _summary(run) == _summary(reference)
    with np.load(run / "plots" / "extremes.npz") as x, \
            np.load(reference / "plots" / "extremes.npz") as y:
        assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in y.files)
    for name in PLOTS:
        assert (run / "plots" / name).read_bytes() == (reference / "plots" / name).read_bytes()


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[int, Path]:
    """Uninterrupted runs of TINY with 0 and 2 DataLoader workers."""
    runs, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)  # faster for these tiny models (see helpers.one_thread)
    try:
        for workers in (0, 2):
            root = tmp_path_factory.mktemp(f"reference{workers}")
            with Trainer.start(_config(root, f"data.workers={workers}")) as trainer:
                trainer.run()
            runs[workers] = trainer.run_dir
    finally:
        torch.set_num_threads(threads)
    return runs


def test_the_number_of_workers_does_not_change_a_run(references):
    """The loaders draw their workers' seed from their own generator: the global random
    stream, hence the run, is the same with or without workers (on a pool without random
    transforms)."""
    assert_same_run(references[2], references[0])


def _signal_after(monkeypatch, at: int, signum: int) -> None:
    """Send `signum` to this process once step `at` (counting from 1) is done."""
    original = Trainer._train_step

    def step(self, *args):
        out = original(self, *args)
        if self.step + 1 == at:
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(Trainer, "_train_step", step)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("signum,workers,seed", [(signal.SIGINT, 0, 0), (signal.SIGTERM, 2, 3)],
                         ids=["SIGINT-0", "SIGTERM-2workers"])  # the crops test: SIGINT, 2
def test_a_signal_mid_epoch_then_resume_is_bitwise_an_uninterrupted_run(
        signum, workers, seed, references, tmp_path, monkeypatch):
    # a random step inside an epoch, not at its end (a checkpoint is made there anyway)
    at = int(np.random.default_rng(seed).choice([1, 2, 4, 5]))
    _signal_after(monkeypatch, at, signum)
    before = signal.getsignal(signum)
    trainer = Trainer.start(_config(tmp_path, f"data.workers={workers}"))
    with trainer, pytest.raises(Interrupted) as stopped:
        trainer.run()
    assert stopped.value.status == 128 + signum  # 130 for SIGINT, 143 for SIGTERM
    assert signal.getsignal(signum) is before  # the previous handler is back
    state = torch.load(trainer.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert (state["epoch"], state["epoch_step"]) == divmod(at, STEPS)  # that very step
    monkeypatch.undo()
    with Trainer.resume(trainer.run_dir) as resumed:
        assert resumed.run() is not None
    assert_same_run(trainer.run_dir, references[workers])


@pytest.mark.usefixtures("one_thread")
def test_random_crops_are_the_same_with_workers_and_after_a_resume(tmp_path, monkeypatch):
    """A folder pool's random crop and flip are drawn from (seed, epoch, index): a run with
    two workers, stopped mid-epoch and resumed, ends as a run without workers does."""
    write_image_folder(tmp_path / "pool", {"red": 6, "blue": 6}, size=20, seed=0)
    write_image_folder(tmp_path / "target", {"blue": 6, "green": 6, "red": 6}, size=20,
                       seed=1)
    folders = ["data.name=folders", f"data.pool_root={tmp_path / 'pool'}",
               f"data.target_root={tmp_path / 'target'}", "meta.shot=1", "meta.query=1",
               "data.options={resize: 20, crop: 16, test_fraction: 0.34}", "train.batch_size=4"]
    with Trainer.start(_config(tmp_path / "plain", *folders)) as trainer:
        trainer.run()
    _signal_after(monkeypatch, 4, signal.SIGINT)  # epoch 2, step 1 of 3
    stopped = Trainer.start(_config(tmp_path / "two", *folders, "data.workers=2"))
    with stopped, pytest.raises(Interrupted):
        stopped.run()
    monkeypatch.undo()
    with Trainer.resume(stopped.run_dir) as resumed:
        resumed.run()
    assert_same_run(stopped.run_dir, trainer.run_dir)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("how", ["error", "SIGTERM"])
def test_a_run_stopped_after_its_last_checkpoint_is_finished_by_resume(
        how, references, tmp_path, monkeypatch):
    """A failure (a probe setting the solver refuses, a full disk) or a kill in the end-of-run
    work used to lose the run: --resume refused a run with all its epochs done."""
    original = trainer_module.finish_run

    def broken(trainer):
        if how == "error":
            raise RuntimeError("injected failure in the end-of-run work")
        os.kill(os.getpid(), signal.SIGTERM)
        return original(trainer)

    monkeypatch.setattr(trainer_module, "finish_run", broken)
    trainer = Trainer.start(_config(tmp_path))
    with trainer, pytest.raises(RuntimeError if how == "error" else Interrupted) as stopped:
        trainer.run()
    if how == "SIGTERM":
        assert stopped.value.status == 143
    assert not (trainer.run_dir / "summary.json").exists()
    monkeypatch.undo()
    with Trainer.resume(trainer.run_dir) as resumed:
        assert resumed.epoch == 2
        summary = resumed.run()
    assert summary["test_accuracy"] == json.loads(
        (references[0] / "summary.json").read_text())["test_accuracy"]
    assert_same_run(trainer.run_dir, references[0])
    with pytest.raises(ConfigError, match="has finished all 2 epochs"):  # now it is done
        Trainer.resume(trainer.run_dir)


ON_MAIN_WORKER = """
import json, sys
import torch.distributed as dist
rank, store, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sys.path.insert(0, path)
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
from betaweighter.errors import BetaweighterError, RunLockedError
from betaweighter.runtime import on_main
out = {"value": on_main(lambda: f"made on rank {dist.get_rank()}")}
def check():
    raise RunLockedError("run r is being written by process 1")
try:
    on_main(check)
except BetaweighterError as e:
    out["error"], out["kind"] = str(e), type(e).__name__
dist.destroy_process_group()
print(json.dumps(out))
"""


def test_a_check_only_rank_zero_makes_stops_every_rank(tmp_path):
    """The run directory and its lock are rank 0's: when they fail, the other ranks must
    not wait in the next collective, but stop too (and exit 2, silently)."""
    path = str(Path(trainer_module.__file__).resolve().parents[2])
    ranks = launch_two_ranks(ON_MAIN_WORKER, tmp_path, path)
    assert [r["value"] for r in ranks] == ["made on rank 0"] * 2
    assert ranks[0]["kind"] == "RunLockedError"
    assert ranks[1]["error"] == "rank 0 stopped: run r is being written by process 1"


def test_under_torchrun_a_mistake_is_one_line_from_rank_zero_and_every_rank_exits_2(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BETAWEIGHTER_CACHE": str(tmp_path / "c")}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         "2", "-m", "betaweighter", "run", "demo", "--out", str(tmp_path / "runs"),
         "--set", "train.epochs=0"], capture_output=True, text=True, env=env, timeout=300,
        cwd=tmp_path)
    lines = [line for line in out.stderr.splitlines() if line.startswith("betaweighter:")]
    assert len(lines) == 1, out.stderr[-3000:]  # once, from rank 0
    assert lines[0].startswith("betaweighter: error: config key 'train.epochs': 0 ")
    assert out.returncode == 1  # torchrun's own status when a worker fails
    # Each rank ends with its own status 2. torchrun may still send SIGTERM to a rank that
    # has not left yet when it sees rank 0 go (a race it prints); that rank ignores it once
    # it knows how it ends, so a status other than 2 (-15, -9) would mean it was killed.
    assert out.stderr.count("exitcode  : 2 ") == 2, out.stderr[-3000:]
    assert not (tmp_path / "runs").exists()

