"""Run directories: created so that no run overwrites another, read without side effects.

A run directory holds::

    config.yaml        the resolved config (absolute paths)
    run.json           version, data fingerprint, image size and normalisation, history
    splits.json        the seeded target splits
    metrics.csv        one row per epoch
    weights.csv        per-instance mean, std, pruned (at the end)
    summary.json       the final numbers (at the end)
    checkpoints/       last.pt (every epoch, or the last step on an interrupt), best.pt
    plots/             PNG files, and extremes.npz (the images the grids show)

`RunDir` reads them: `plot`, `weights` and `evaluate` use it and never build the data or
write into the run. `RunDir.lock` keeps a second process from writing to a run that is
still training; whoever takes it removes the temporary files that a killed writer's atomic
writes left behind (``.<name>.*.tmp``), since only the lock's holder writes.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from betaweighter.checkpoint import read_checkpoint
from betaweighter.errors import CheckpointError, RunLockedError
from betaweighter.experiment.config import Config, load_config
from betaweighter.io import make_dirs, output_error

__all__ = ["SEEDED_DATA", "RunDir", "create_run_dir", "run_dir_name"]

LOCK_FILE = ".lock"
#: data drawn from the seed alone: a resume remakes its splits, no splits.json is read
SEEDED_DATA = ("demo", "mixture", "shapes")
_HINT = "choose another output root with --out"


def run_dir_name(name: str) -> str:
    """The folder name a run called `name` gets: anything but letters, digits, ``.``, ``_``
    and ``-`` becomes ``-`` (so ``../../etc/x`` is ``..-..-etc-x``, never a path)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")
    return safe if safe.strip(".") else "run"


def create_run_dir(root: str | Path, name: str, run_folders: bool = True) -> Path:
    """Create ``root/name`` (or ``root/name-1``, ``-2``, ... if taken) and return it, with
    the ``checkpoints`` and ``plots`` folders of a run unless `run_folders` is False (a
    directory that holds other runs, as `compare`'s).

    `mkdir` without exist_ok is atomic, so two runs started at once get two directories.
    """
    safe = run_dir_name(name)
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        from betaweighter.errors import ConfigError

        raise ConfigError(f"output root {str(root)!r} is a file; give a directory with --out")
    make_dirs(root, _HINT)
    for i in range(10_000):
        path = root / (safe if i == 0 else f"{safe}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            raise output_error(e, path, _HINT, folder=True) from None
        try:
            if run_folders:
                (path / "checkpoints").mkdir()
                (path / "plots").mkdir()
        except OSError as e:
            shutil.rmtree(path, ignore_errors=True)
            raise output_error(e, path, _HINT, folder=True) from None
        return path
    raise RuntimeError(f"could not find a free run directory name under {root}")


class RunDir:
    """A run directory, read-only. Raises `CheckpointError` if `path` is not one (unless
    ``check=False``, for a directory a new run is still filling)."""

    def __init__(self, path: str | Path, check: bool = True) -> None:
        self.path = Path(path).expanduser()
        if not check:
            return
        if self.path.is_file():
            raise CheckpointError(f"{str(self.path)!r} is a file, not a run directory; give the "
                                  "folder `betaweighter run` created")
        if not self.path.is_dir():
            raise CheckpointError(f"run directory {str(self.path)!r} does not exist")
        if not self.config_path.is_file():
            raise CheckpointError(f"{str(self.path)!r} is not a run directory (no config.yaml); "
                                  "give the folder `betaweighter run` created")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def config(self) -> Config:
        """The run's resolved config."""
        from betaweighter.errors import ConfigError

        try:
            return load_config(self.config_path)
        except ConfigError as e:
            raise CheckpointError(f"the run's {e}; restore config.yaml from a copy") from None

    def checkpoint_path(self, which: str = "last") -> Path:
        return self.path / "checkpoints" / f"{which}.pt"

    def splits_file(self, data_name: str) -> Path | None:
        """``splits.json``, for a resume to rebuild the same target splits: None for data
        drawn from the seed (`SEEDED_DATA`), which the seed remakes exactly. A run on data
        read from files that lost the file is refused: new splits could move test images
        into training."""
        path = self.path / "splits.json"
        if data_name in SEEDED_DATA:
            return path if path.is_file() else None
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist: it holds the run's target splits, "
                                  "which new ones made now could mix test images into "
                                  "training; restore splits.json from a copy, or start a new run")
        return path

    def state(self, which: str = "last") -> dict[str, Any]:
        """The training state saved in ``checkpoints/<which>.pt``."""
        path = self.checkpoint_path(which)
        if not path.is_file():
            hint = ("the run has not finished an epoch yet" if which == "last" else
                    "no epoch improved the validation accuracy yet")
            raise CheckpointError(f"checkpoint {path} does not exist ({hint})")
        return read_checkpoint(path, require=("format_version", "epoch", "config", "model",
                                              "weights", "rng"))

    def info(self) -> dict[str, Any]:
        """run.json (empty when missing)."""
        return _read_json(self.path / "run.json", required=False) or {}

    def summary(self) -> dict[str, Any] | None:
        """summary.json, or None while the run is not finished."""
        return _read_json(self.path / "summary.json", required=False)

    def metrics(self) -> list[dict[str, str]]:
        """metrics.csv as a list of rows (empty before the first epoch ends)."""
        path = self.path / "metrics.csv"
        if not path.is_file():
            return []
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise CheckpointError(f"{path} cannot be read ({e}); restore it from a copy"
                                  ) from None
        if rows and "epoch" not in rows[0]:
            raise CheckpointError(f"{path} is not a metrics file (no 'epoch' column); "
                                  "restore it from a copy")
        return rows

    def _remove_stale_temporaries(self) -> None:
        for tmp in _stale_temporaries(self.path):
            tmp.unlink(missing_ok=True)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's writer lock; a second writer gets `RunLockedError` naming the
        process that holds it. Released when the block ends or the process dies."""
        path = self.path / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                raise RunLockedError(f"run {self.path} is being written by process {holder}; "
                                     "wait for it to finish or stop it first") from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._remove_stale_temporaries()
            yield
        finally:
            os.close(fd)


def _stale_temporaries(folder: Path) -> list[Path]:
    """The temporary files of atomic writes (`betaweighter.io`) in a run's folders."""
    return [p for sub in (folder, folder / "checkpoints", folder / "plots") if sub.is_dir()
            for p in sub.glob(".*.tmp") if p.is_file()]


def _read_json(path: Path, required: bool = True) -> Any:
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path} does not exist")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} cannot be read ({e}); restore it from a copy") from None
