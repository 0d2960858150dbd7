"""Every fault a user can hit ends in one clear line, and no run is ever lost.

The real command runs in a subprocess (``python -m betaweighter``) wherever the fault is at
the process level (signals, exit codes, what stays on disk); the corruption matrix calls the
same entry point in-process to stay fast.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import TINY
from ondisk import write_image_folder

from betaweighter.cli import main

TIMING = ("epoch_seconds",)


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "BETAWEIGHTER_CACHE": str(cache),
            "PYTHONPATH": os.pathsep.join(sys.path)}


def _cli(args: list[str], cwd: Path, cache: Path,
         timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "betaweighter", *args], cwd=cwd,
                          env=_env(cache), capture_output=True, text=True, timeout=timeout)


def _sets(items: list[str]) -> list[str]:
    out = []
    for item in items:
        out += ["--set", item]
    return out


def _one_error_line(err: str) -> str:
    """The one error line (informational lines such as "resuming ..." may precede it)."""
    errors = [line for line in err.splitlines() if line.startswith("betaweighter: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    return errors[0]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


# -- interruptions ------------------------------------------------------------------------
DRIVER = """
import os, signal, sys
import betaweighter.experiment.trainer as trainer
from betaweighter.cli import main
at, how = int(sys.argv[1]), sys.argv[2]
original = trainer.Trainer._train_step
def step(self, *args):
    out = original(self, *args)
    if self.step + 1 == at:  # after this step completes (counting from 1)
        if how == "term":  # as a job scheduler does: the whole process group, workers too,
            child = os.fork()  # and from another process (torch's workers exit quietly on
            if child == 0:     # their parent's SIGTERM, but die of anyone else's)
                os.killpg(0, signal.SIGTERM)
                os._exit(0)
            os.waitpid(child, 0)
        elif how != "end":
            os.kill(os.getpid(), signal.SIGINT if how == "int" else signal.SIGKILL)
    return out
trainer.Trainer._train_step = step
if how == "end":  # killed in the end-of-run work, after the last checkpoint
    trainer.finish_run = lambda t: os.kill(os.getpid(), signal.SIGKILL)
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    """An uninterrupted run of TINY (2 epochs x 3 steps)."""
    out = tmp_path_factory.mktemp("reference")
    done = _cli(["run", "demo", "--out", str(out), *_sets(TINY + ["experiment.name=r"])], out,
                cache)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "r"


# "kill" runs by default; the process-level SIGINT and SIGTERM cases are slow, and the same
# stop-and-resume paths run in-process in test_interrupts.py (a signal mid-epoch)
@pytest.mark.parametrize("how", [pytest.param("int", marks=pytest.mark.slow), "kill",
                                 pytest.param("term", marks=pytest.mark.slow),
                                 pytest.param("end", marks=pytest.mark.slow)])
def test_interrupt_at_a_random_step_then_resume_matches_an_uninterrupted_run(
        how, reference, tmp_path, cache):
    """Ctrl-C, SIGKILL, SIGTERM to the process group (with DataLoader workers, which a
    job scheduler signals too) at a random step, or SIGKILL in the end-of-run work (slow:
    test_interrupts.py stops the end-of-run work in-process)."""
    seed = {"int": 1, "kill": 2, "term": 4, "end": 0}[how]
    at = int(np.random.default_rng(seed).integers(1, 6))  # of 6 steps
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    workers = ["data.workers=2"] if how == "term" else []  # workers do not change the run
    args = ["run", "demo", "--out", str(tmp_path),
            *_sets(TINY + ["experiment.name=r", *workers])]
    first = subprocess.run([sys.executable, str(driver), str(at), how, *args], cwd=tmp_path,
                           env=_env(cache), capture_output=True, text=True, timeout=600,
                           start_new_session=True)
    run = tmp_path / "r"
    if how in ("int", "term"):
        assert first.returncode == (130 if how == "int" else 143), first.stderr[-3000:]
        last = [line for line in first.stderr.splitlines() if line.strip()][-1]
        assert last == f"interrupted; resume with: betaweighter run --resume {run}"
        assert "Traceback" not in first.stderr
    else:
        assert first.returncode == -signal.SIGKILL
    resumed = _cli(["run", "--resume", str(run)], tmp_path, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if how != "kill" or at > 3:  # a checkpoint exists: mid-epoch, epoch 1's end, the end
        assert f"resuming {run} at epoch" in resumed.stderr
    if how == "end":
        assert "all trained: writing the end-of-run files" in resumed.stderr
    summaries = [json.loads((r / "summary.json").read_text()) for r in (run, reference)]
    assert [{k: v for k, v in x.items() if k != "train_seconds"} for x in summaries] == [
        {k: v for k, v in summaries[1].items() if k != "train_seconds"}] * 2
    assert _rows(run / "metrics.csv") == _rows(reference / "metrics.csv")
    assert (run / "weights.csv").read_bytes() == (reference / "weights.csv").read_bytes()
    a = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_a_kill_before_the_first_checkpoint_leaves_a_clear_message(tmp_path, cache):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = ["run", "demo", "--out", str(tmp_path), *_sets(TINY + ["experiment.name=r"])]
    subprocess.run([sys.executable, str(driver), "1", "kill", *args], cwd=tmp_path,
                   env=_env(cache), capture_output=True, text=True, timeout=600)
    again = _cli(["run", "--resume", str(tmp_path / "r")], tmp_path, cache)
    assert again.returncode == 2
    assert "has not finished an epoch yet" in _one_error_line(again.stderr)


# -- numbers --------------------------------------------------------------------------------
def test_a_diverging_run_stops_at_once_and_stays_resumable(tmp_path, cache):
    base = ["run", "demo", "--out", str(tmp_path), *_sets(TINY + ["experiment.name=r",
                                                                "train.epochs=1"])]
    assert _cli(base, tmp_path, cache).returncode == 0
    run = tmp_path / "r"
    before = (run / "checkpoints" / "last.pt").read_bytes()
    blown = _cli(["run", "--resume", str(run), "--set", "train.epochs=2", "--set",
                  "train.lr=1e30"], tmp_path, cache)
    assert blown.returncode == 2
    line = _one_error_line(blown.stderr)
    assert "became nan" in line or "became inf" in line
    assert "epoch 2, step" in line and "Lower train.lr" in line
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    fixed = _cli(["run", "--resume", str(run), "--set", "train.epochs=2", "--set",
                  "train.lr=0.05"], tmp_path, cache)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert len(_rows(run / "metrics.csv")) == 2


# -- paths ----------------------------------------------------------------------------------
def test_relative_data_paths_survive_a_move_of_directory_and_of_data(tmp_path, cache):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_image_folder(work / "data" / "pool", {"red": 8}, size=16, seed=0)
    counts = {"blue": 6, "green": 6, "red": 6}
    write_image_folder(work / "data" / "target", counts, size=16, seed=1)
    config = work / "c.yaml"
    config.write_text(yaml.safe_dump({
        "experiment": {"name": "f"},
        "data": {"name": "folders", "pool_root": "data/pool", "target_root": "data/target",
                 "options": {"resize": 16, "crop": 16, "test_fraction": 0.34}},
        "model": {"name": "convnet", "width": 8, "blocks": 2},
        "meta": {"way": 3, "shot": 1, "query": 1},
        "train": {"epochs": 2, "batch_size": 4, "milestones": [1]},
        "evaluate": {"c_grid": [1.0], "final_c_grid": [1.0]}}))
    # stopped after epoch 1 by a kill of the process at its fifth step (epoch 2, step 1)
    driver = work / "driver.py"
    driver.write_text(DRIVER)
    subprocess.run([sys.executable, str(driver), "3", "kill", "run", "c.yaml", "--out",
                    "runs"], cwd=work, env=_env(cache), capture_output=True, text=True,
                   timeout=600)
    run = work / "runs" / "f"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["pool_root"] == str(work / "data" / "pool")  # stored absolute
    for args in (["plot", str(run)], ["weights", str(run), "-o", str(elsewhere / "w.csv")]):
        assert _cli(args, elsewhere, cache).returncode == 0  # from another directory
    moved = tmp_path / "moved"
    shutil.move(str(work / "data"), str(moved))
    lost = _cli(["run", "--resume", str(run)], elsewhere, cache)
    assert lost.returncode == 2 and "pool" in _one_error_line(lost.stderr)
    resumed = _cli(["run", "--resume", str(run), "--set", f"data.pool_root={moved / 'pool'}",
                    "--set", f"data.target_root={moved / 'target'}"], elsewhere, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "moved from" in resumed.stderr and "matches the run's" in resumed.stderr
    other = tmp_path / "other"
    write_image_folder(other / "target", counts, size=16, seed=9)  # other images
    shutil.copytree(moved / "pool", other / "pool")
    changed = _cli(["run", "--resume", str(run), "--set", "train.epochs=3", "--set",
                    f"data.target_root={other / 'target'}"], elsewhere, cache)
    assert changed.returncode == 2 and "differs from the run's" in _one_error_line(
        changed.stderr)


def test_run_outputs_follow_the_umask(reference):
    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/last.pt"):
        mode = (reference / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~_umask(), name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- command-line mistakes ------------------------------------------------------------------
def _main(args: list[str], capsys) -> tuple[int, str]:
    """The entry point in-process (for faults of the config or the data, not of the
    process): its exit status and what it printed on stderr."""
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err


def test_command_line_mistakes_are_one_line(tmp_path, cache, capsys, monkeypatch):
    monkeypatch.setenv("BETAWEIGHTER_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    (tmp_path / "latin1.yaml").write_bytes(b"experiment:\n  name: caf\xe9\n")
    cases = [
        (["run", "demo", "--set", "train.lr=[1,"], "not valid YAML"),
        (["run", "demo", "--set", "train.lr=nan"], "finite number"),
        (["run", "demo", "--out", str(tmp_path / "file")], "is a file"),
        (["run", str(tmp_path)], "is a directory"),
        (["run", str(tmp_path / "latin1.yaml")], "not UTF-8"),
        (["run", "demo", "--device", "tpu"], "unknown device 'tpu'"),
        (["run", "demo", "--device", "cuda"], "no GPU is visible"),
        (["run", "--resume", str(tmp_path / "nowhere")], "does not exist"),
    ]
    done = _cli(cases[0][0], tmp_path, cache)  # the real command, once: its exit status
    assert done.returncode == 2 and cases[0][1] in _one_error_line(done.stderr)
    for args, match in cases[1:]:
        code, err = _main(args, capsys)
        assert code == 2, (args, err[-2000:])
        assert match in _one_error_line(err), args
    assert not (tmp_path / "runs").exists()


def test_dry_run_and_configs_list(tmp_path, cache):
    dry = _cli(["run", "demo", "--dry-run", "--out", str(tmp_path / "runs")], tmp_path, cache)
    assert dry.returncode == 0 and yaml.safe_load(dry.stdout)["experiment"]["name"]
    assert not (tmp_path / "runs").exists()
    listed = _cli(["configs"], tmp_path, cache)
    assert listed.returncode == 0 and "stl10/bdw" in listed.stdout


# -- evaluate -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, reference) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evaluation")
    counts = {"blue": 6, "green": 6, "red": 6}
    data = {s: write_image_folder(root / s, counts, size=16, seed=i)
            for i, s in enumerate(("train", "test"))}
    config = root / "eval.yaml"
    config.write_text(yaml.safe_dump({"evaluate": {"linear": {
        "data": {k: str(v) for k, v in data.items()}, "c_values": [1.0],
        "cache_features": False}}}))
    return config, root


def test_evaluate_names_a_truncated_image_in_one_line(evaluation, reference, cache, tmp_path):
    config, root = evaluation
    broken = tmp_path / "test"
    shutil.copytree(root / "test", broken)
    victim = sorted(broken.rglob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:60])
    cfg = yaml.safe_load(config.read_text())
    cfg["evaluate"]["linear"]["data"]["test"] = str(broken)
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(cfg))
    done = _cli(["evaluate", str(reference), str(tmp_path / "e.yaml"), "--task", "linear"],
                tmp_path, cache)
    assert done.returncode == 2 and str(victim) in _one_error_line(done.stderr)


def test_evaluate_data_and_device_errors_are_one_line(evaluation, reference, cache, tmp_path,
                                                     capsys, monkeypatch):
    monkeypatch.setenv("BETAWEIGHTER_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    config, root = evaluation
    cfg = yaml.safe_load(config.read_text())
    empty = write_image_folder(tmp_path / "empty", {"red": 3}, size=16)
    (empty / "blue").mkdir()
    extra = write_image_folder(tmp_path / "extra", {"red": 3}, size=16)
    shutil.copytree(extra / "red", extra / "purple")
    few = write_image_folder(tmp_path / "few", {"red": 8, "blue": 8}, size=16)
    bare = tmp_path / "bare"
    bare.mkdir()
    variants = {
        "empty class folder": ({"linear": {"data": {"train": str(empty), "test": str(empty)}}},
                               "hold no images"),
        "extra test class": ({"linear": {"data": {**cfg["evaluate"]["linear"]["data"],
                                                  "test": str(extra)}}}, "purple"),
        "no class folders": ({"linear": {"data": {"train": str(bare), "test": str(bare)}}},
                             "no class sub-folders"),
        "missing train": ({"linear": {"data": {"test": str(root / "test")}}},
                          "'evaluate.linear.data.train' is required"),
        "too few classes": ({"fewshot": {"data": {"train": str(few)}, "way": 5}},
                            "a 5-way"),
    }
    for name, (section, match) in variants.items():
        path = tmp_path / "v.yaml"
        path.write_text(yaml.safe_dump({"evaluate": section}))
        task = next(iter(section))
        code, err = _main(["evaluate", str(reference), str(path), "--task", task], capsys)
        assert code == 2, name
        assert match in _one_error_line(err), name
    for device, match in (("cuda", "no GPU is visible"), ("tpu", "unknown device")):
        code, err = _main(["evaluate", str(reference), str(config), "--task", "linear",
                           "--device", device], capsys)
        assert code == 2 and match in _one_error_line(err)
    dup = tmp_path / "dup.yaml"
    dup.write_text("evaluate:\n  linear:\n    c_values: [1.0]\n    c_values: [2.0]\n")
    done = _cli(["evaluate", str(reference), str(dup), "--task", "linear"], tmp_path, cache)
    assert done.returncode == 2 and "duplicate key 'c_values'" in _one_error_line(done.stderr)


# -- a corrupted run directory ---------------------------------------------------------------
CORRUPTIONS = ("truncate", "garbage", "delete")


def _corrupt(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    else:  # the first eighth: a config loses most sections, an archive its directory
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 8])


# file -> commands that read it (and so must fail on it); every other command must succeed
READERS = {
    "config.yaml": {"resume", "plot", "weights"},
    "checkpoints/last.pt": {"resume", "plot", "weights"},
    "checkpoints/best.pt": {"evaluate"},
    "plots/extremes.npz": {"plot"},
    "metrics.csv": set(), "weights.csv": set(), "summary.json": set(), "run.json": set(),
    "splits.json": set(),
}
# Where a reader can do without the file: a deleted best.pt falls back to last.pt, a
# deleted extremes.npz skips the image grids (with a warning), a deleted config.yaml of a
# plot is "not a run directory".
STILL_WORKS = {("checkpoints/best.pt", "delete", "evaluate"),
               ("plots/extremes.npz", "delete", "plot"),
               ("config.yaml", "garbage", "plot"), ("config.yaml", "truncate", "plot")}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, cache) -> Path:
    """A run stopped after epoch 1 of 2 (killed), for --resume, with best.pt."""
    out = tmp_path_factory.mktemp("stopped")
    driver = out / "driver.py"
    driver.write_text(DRIVER)
    subprocess.run([sys.executable, str(driver), "4", "kill", "run", "demo", "--out", str(out),
                    *_sets(TINY + ["experiment.name=s"])], cwd=out, env=_env(cache),
                   capture_output=True, text=True, timeout=600)
    return out / "s"


@pytest.mark.parametrize("name", sorted(READERS))
def test_each_corrupted_file_is_named_in_one_line_and_nothing_is_written(
        name, reference, stopped, evaluation, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BETAWEIGHTER_CACHE", str(tmp_path / "cache"))
    config, _ = evaluation
    commands = {
        "resume": lambda run: ["run", "--resume", str(run)],
        "plot": lambda run: ["plot", str(run)],
        "weights": lambda run: ["weights", str(run), "-o", str(tmp_path / "w.csv")],
        "evaluate": lambda run: ["evaluate", str(run), str(config), "--task", "linear",
                                 "--device", "cpu"],
    }
    for how in CORRUPTIONS:
        for command in commands:
            source = stopped if command == "resume" else reference
            if not (source / name).exists():
                continue
            run = tmp_path / f"{how}-{command}"
            shutil.copytree(source, run)
            _corrupt(run / name, how)
            before = _snapshot(run)
            fails = command in READERS[name] and (name, how, command) not in STILL_WORKS
            if command == "resume" and not fails:
                continue  # it would train on: covered by the resume tests above
            code = main(commands[command](run))
            err = capsys.readouterr().err
            if fails:
                assert code == 2, (name, how, command, err)
                line = _one_error_line(err)
                assert Path(name).name in line or "not a run directory" in line, line
                assert _snapshot(run) == before, (name, how, command)
            else:
                assert code == 0, (name, how, command, err)
                assert "Traceback" not in err
