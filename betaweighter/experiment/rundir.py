"""Run directories that never overwrite each other, and atomic file writes."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


def create_run_dir(root: str | Path, name: str) -> Path:
    """Create ``root/name`` (or ``root/name-1``, ``-2``, ... if taken) and return it.

    `mkdir` without exist_ok is atomic, so two runs started at once still get two
    directories.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(10_000):
        path = root / (safe if i == 0 else f"{safe}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        (path / "checkpoints").mkdir()
        (path / "plots").mkdir()
        return path
    raise RuntimeError(f"could not find a free run directory name under {root}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`: a
    crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
