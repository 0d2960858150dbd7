"""Atomic file writes and JSON that is always valid.

Every file betaweighter writes goes through `atomic_write_bytes`: the bytes go to a
temporary file in the same folder, are flushed to disk, and the temporary file is renamed
over the target. A crash leaves the old file or the new one, never half of one. The file
gets the permissions a plain ``open(path, "w")`` would give it (0666 minus the umask), not
the 0600 of a temporary file.

A write that the system refuses (a full disk, a read-only file system, a folder that is a
file) raises `OutputError`, one line naming the path and the fix (`output_error`), and
leaves no temporary file behind.
"""

from __future__ import annotations

import errno as _errno
import io as _io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from betaweighter.errors import OutputError

__all__ = ["atomic_link", "atomic_write_bytes", "atomic_write_text", "jsonable", "make_dirs",
           "output_error", "save_array", "write_json"]


def output_error(err: OSError, path: str | os.PathLike, hint: str = "",
                 folder: bool = False) -> OutputError:
    """`err`, raised while writing `path` (a file, or a `folder` being created), as one line
    naming the path and the fix; `hint` adds where to change it (e.g. "choose another output
    root with --out")."""
    path = Path(path)
    code = err.errno
    verb = "created" if folder else "written"
    blocker = _file_in_the_way(path) if code in (_errno.EEXIST, _errno.ENOTDIR) else None
    if code in (_errno.ENOSPC, getattr(_errno, "EDQUOT", _errno.ENOSPC)):
        doing = "creating" if folder else "writing"
        text = f"no space left on {path.parent} ({doing} {path.name}): free some space"
    elif blocker is not None:
        text = (f"{path} cannot be {verb}: {blocker} is a file, not a folder; remove it or "
                "write elsewhere")
    elif code == _errno.EROFS:
        text = f"{path} cannot be {verb}: the file system is read-only; write elsewhere"
    elif code in (_errno.EACCES, _errno.EPERM):
        text = f"{path} cannot be {verb} (permission denied); write to a folder you own"
    else:
        text = (f"{path} cannot be {verb} ({err.strerror or type(err).__name__}); write to "
                "a folder you can write to")
    return OutputError(path, text + (f" ({hint})" if hint else ""), code)


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing entry among `path` and its parents, when it is not a folder."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return None if candidate.is_dir() else candidate
    return None


def make_dirs(path: str | os.PathLike, hint: str = "") -> Path:
    """``mkdir -p`` that fails with `OutputError` (see `output_error`)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(e, path, hint, folder=True) from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise output_error(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise output_error(e, path) from None
        raise
    return path


def atomic_link(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make `path` an atomic hard link to the file `source` (a copy where the file system
    has no hard links). Later atomic writes to `source` replace its directory entry, not
    its bytes, so `path` keeps what `source` held now."""
    source, path = Path(source), Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise output_error(e, path) from None
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network and FAT file systems)
            shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise output_error(e, path) from None
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(value: Any) -> Any:
    """`value` with NumPy scalars/arrays, tensors and paths turned into JSON types and
    non-finite floats into ``None`` (strict JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> Path:
    """Write `payload` as strict JSON (NaN and infinity become null), atomically."""
    text = json.dumps(jsonable(payload), indent=indent, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def save_array(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a NumPy array in ``.npy`` format, atomically."""
    buffer = _io.BytesIO()
    np.save(buffer, np.asarray(array))
    return atomic_write_bytes(path, buffer.getvalue())
