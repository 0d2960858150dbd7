"""Files and disks: every write the system refuses is one line naming the path and the fix,
a run that cannot start leaves no directory, a full disk mid-run leaves the last complete
checkpoint resumable, and a cache never breaks an evaluation.

A full disk is injected where it surfaces for an atomic write: ``os.fsync`` of the
temporary file fails with ENOSPC. A read-only folder is made with chmod, or, under root
(whom chmod does not stop), by refusing the creation of files and folders inside it with
EROFS at ``os.open`` and ``os.mkdir``, as a read-only mount does.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import TINY
from ondisk import write_checkpoint, write_image_folder

from betaweighter.cli import main
from betaweighter.experiment.rundir import RunDir

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads temporary file names from /proc/self/fd")


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _error(capsys, args: list[str], code: int = 2) -> str:
    """Run the command; it must exit with `code` and, on an error, print one error line."""
    got = main(args)
    err = capsys.readouterr().err
    assert got == code and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("betaweighter: error: ")]
    assert len(errors) == (1 if code else 0), err
    return errors[0] if errors else err


@pytest.fixture
def disk_full(monkeypatch):
    """``disk_full(pattern, after=n)``: the (n+1)-th and later atomic writes of a file whose
    name matches `pattern` fail with ENOSPC; ``disk_full.clear()`` frees the disk."""
    real, rules = os.fsync, []

    def fsync(fd: int) -> None:
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name  # .<file>.<random>.tmp
        for rule in rules:
            if fnmatch.fnmatch(name, f".{rule['pattern']}.*.tmp"):
                rule["seen"] += 1
                if rule["seen"] > rule["after"]:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    class Full:
        def __call__(self, pattern: str, after: int = 0) -> None:
            rules.append({"pattern": pattern, "after": after, "seen": 0})

        def clear(self) -> None:
            rules.clear()

    return Full()


@pytest.fixture
def read_only(monkeypatch, request):
    """``read_only(folder)``: `folder` is read-only for this test (see the module docstring)."""

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            request.addfinalizer(lambda: folder.chmod(0o755))
            return
        inside = str(folder.resolve())
        real_open, real_mkdir = os.open, os.mkdir

        def refused(path) -> bool:
            return os.path.abspath(os.fspath(path)).startswith(inside)

        def fake_open(path, flags, *args, **kwargs):
            if flags & (os.O_CREAT | getattr(os, "O_TMPFILE", 0)) and refused(path):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
            return real_open(path, flags, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            if refused(path):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)

    return make


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished TINY run (2 epochs of 3 steps)."""
    out = tmp_path_factory.mktemp("finished")
    assert main(["run", "demo", "--out", str(out), *_sets(TINY + ["experiment.name=f"])]) == 0
    return out / "f"


def test_a_full_disk_at_the_start_leaves_no_directory(tmp_path, capsys, disk_full):
    for name in ("splits.json", "config.yaml", "run.json"):
        disk_full(name)
        out = tmp_path / name
        line = _error(capsys, ["run", "demo", "--out", str(out), *_sets(TINY)])
        assert f"no space left on {out / 'demo'} (writing {name}): free some space" in line
        assert not out.exists(), name  # the fresh output root goes too
        disk_full.clear()


def test_a_full_disk_at_a_checkpoint_or_a_plot_stays_resumable(tmp_path, capsys, disk_full):
    disk_full("last.pt", after=1)  # epoch 1's checkpoint fits, epoch 2's does not
    out = tmp_path / "runs"
    line = _error(capsys, ["run", "demo", "--out", str(out), *_sets(TINY)])
    run = out / "demo"
    assert f"no space left on {run / 'checkpoints'} (writing last.pt)" in line
    assert "previous version of the file is intact" in line
    assert f"betaweighter run --resume {run}" in line
    assert RunDir(run).state()["epoch"] == 1
    assert not list(run.rglob("*.tmp"))
    disk_full.clear()
    disk_full("curves.png")  # the end-of-run plots
    line = _error(capsys, ["run", "--resume", str(run)])
    assert f"no space left on {run / 'plots'} (writing curves.png)" in line
    assert RunDir(run).state()["epoch"] == 2 and not (run / "summary.json").exists()
    disk_full.clear()
    _error(capsys, ["run", "--resume", str(run)], code=0)  # finishes the end-of-run work
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    assert (run / "plots" / "curves.png").stat().st_size > 0


def test_a_first_checkpoint_that_does_not_fit_says_to_run_again(tmp_path, capsys, disk_full):
    disk_full("last.pt")
    line = _error(capsys, ["run", "demo", "--out", str(tmp_path), *_sets(TINY)])
    assert "no earlier version of the file exists" in line and "run it again" in line


def test_outputs_that_cannot_be_written_are_one_line_naming_the_path(
        tmp_path, capsys, read_only, finished):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    line = _error(capsys, ["run", "demo", "--out", str(a_file / "runs"), *_sets(TINY)])
    assert f"{a_file} is a file, not a folder" in line and "--out" in line
    line = _error(capsys, ["run", "demo", "--out", "/proc/betaweighter-test", *_sets(TINY)])
    assert "/proc/betaweighter-test cannot be created" in line and "--out" in line
    line = _error(capsys, ["weights", str(finished), "-o", str(a_file / "w.csv")])
    assert f"{a_file} is a file, not a folder" in line
    line = _error(capsys, ["weights", str(a_file)])
    assert f"{str(a_file)!r} is a file, not a run directory" in line
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked)
    line = _error(capsys, ["run", "demo", "--out", str(locked / "runs"), *_sets(TINY)])
    assert str(locked / "runs") in line and ("read-only" in line or "permission" in line)
    line = _error(capsys, ["weights", str(finished), "-o", str(locked / "w.csv")])
    assert str(locked / "w.csv") in line and ("read-only" in line or "permission" in line)
    assert not list(locked.iterdir())


def test_evaluate_beside_a_read_only_checkpoint_uses_the_user_cache_and_heals_the_cache(
        tmp_path, capsys, monkeypatch, read_only, tiny_convnet_config):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BETAWEIGHTER_CACHE", str(cache))
    data = {s: str(write_image_folder(tmp_path / s, {"red": 6, "blue": 6}, seed=i))
            for i, s in enumerate(("train", "test"))}
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"evaluate": {"linear": {
        "data": data, "c_values": [1.0], "image_size": 16, "max_iter": 100}}}))
    store = tmp_path / "store"
    checkpoint = write_checkpoint(store / "model.pt", tiny_convnet_config)
    read_only(store)
    args = ["evaluate", str(checkpoint), str(config), "--task", "linear", "--device", "cpu"]
    err = _error(capsys, args, code=0)
    [fallback] = (cache / "outputs").iterdir()
    assert f"{store} cannot be written" in err and str(fallback) in err
    assert sorted(p.name for p in store.iterdir()) == ["model.pt"]
    first = json.loads((fallback / "eval_linear.json").read_text())["result"]
    entries = sorted((fallback / "feature_cache").glob("*.features.npy"))
    assert len(entries) == 3  # train, val, test
    whole = entries[0].read_bytes()
    entries[0].write_bytes(whole[: len(whole) // 2])  # a truncated entry: recomputed
    err = _error(capsys, args, code=0)
    assert "is damaged or incomplete: computing it again" in err
    assert entries[0].read_bytes() == whole
    assert json.loads((fallback / "eval_linear.json").read_text())["result"] == first


def test_stale_temporary_files_go_when_a_writer_takes_the_run(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    stale = [run / "checkpoints" / ".last.pt.abc123.tmp", run / ".run.json.x.tmp",
             run / "plots" / ".curves.png.y.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    keep = run / "checkpoints" / "notes.tmp"  # not a temporary file of betaweighter's
    keep.write_text("mine")
    with RunDir(run).lock():
        assert not any(p.exists() for p in stale) and keep.exists()


def test_a_deleted_splits_file_is_refused_and_a_broken_target_image_stops_the_start(
        tmp_path, capsys):
    pool = write_image_folder(tmp_path / "pool", {"red": 8, "blue": 8}, seed=1)
    target = write_image_folder(tmp_path / "target", {"red": 10, "green": 10}, seed=2)
    folders = [f"data.pool_root={pool}", f"data.target_root={target}", "data.name=folders",
               "data.options={resize: 16, crop: 16}", "meta.way=2", "meta.shot=1",
               "meta.query=1", "train.epochs=2"]
    out = tmp_path / "runs"
    args = ["run", "demo", "--out", str(out), *_sets(TINY + folders)]
    from betaweighter.experiment.config import load_config
    from betaweighter.experiment.trainer import Trainer

    with Trainer.start(load_config("demo", TINY + folders + [
            f"experiment.output_root={out}"])) as trainer:
        trainer.run(stop_after=1)
    run = trainer.run_dir
    (run / "splits.json").unlink()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    line = _error(capsys, ["run", "--resume", str(run)])
    assert f"{run / 'splits.json'} does not exist" in line and "restore" in line
    assert {p: p.read_bytes() for p in before} == before
    victim = sorted((target / "green").iterdir())[0]
    victim.write_bytes(b"")
    shutil.rmtree(out)
    line = _error(capsys, args)
    assert f"{victim}: the image file is empty" in line and not out.exists()


def test_a_damaged_extremes_file_never_suggests_unpickling(finished, tmp_path, capsys):
    import io

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    buffer = io.BytesIO()
    np.savez(buffer, highest=np.array([{"a": 1}], dtype=object))
    (run / "plots" / "extremes.npz").write_bytes(buffer.getvalue())
    line = _error(capsys, ["plot", str(run)])
    assert "extremes.npz holds Python objects" in line and "allow_pickle" not in line


def test_a_loss_that_diverges_before_any_checkpoint_does_not_offer_resume(tmp_path, capsys):
    line = _error(capsys, ["run", "demo", "--out", str(tmp_path), *_sets(
        TINY + ["train.lr=1e30"])])
    assert "became nan" in line or "became inf" in line
    assert "no checkpoint was written yet" in line and "--resume" not in line
