"""Checkpoint files: written atomically, read safely, every failure a `CheckpointError`.

A checkpoint is a ``torch.save``'d dict of tensors and plain Python values (numbers,
strings, lists, dicts), so it loads with ``torch.load(weights_only=True)``: reading one
never runs pickled code. NumPy arrays are stored as tensors with their dtype (`to_plain`)
and come back as arrays (`from_plain`). The keys ``model`` (a backbone's state dict),
``model_config`` (the keyword arguments of `betaweighter.models.build_model`) and
``data_config`` (image size and normalisation the backbone was trained with) are the
contract the evaluators rely on; a run checkpoint adds everything ``--resume`` needs.

``torch.load`` does not check the archive's CRCs, so a flipped bit in a tensor would load
silently as a wrong weight; `read_checkpoint` checks every member's CRC first and calls a
damaged or truncated file that, never "not a checkpoint" or "holds Python objects".
"""

from __future__ import annotations

import io
import pickle
import pickletools
import random
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from betaweighter.errors import CheckpointError, OutputError
from betaweighter.io import atomic_write_bytes

__all__ = ["CHECKPOINT_NAMES", "FORMAT_VERSION", "all_rng_states", "from_plain",
           "read_checkpoint",
           "resolve_checkpoint", "rng_state", "save_checkpoint", "set_rng_state", "to_plain"]

FORMAT_VERSION = 2
CHECKPOINT_NAMES = ("best.pt", "last.pt")


def to_plain(obj: Any) -> Any:
    """Replace numpy arrays and scalars by tensors and Python numbers (recursively)."""
    if isinstance(obj, np.ndarray):
        kind = np.int64 if obj.dtype.kind in "iu" else obj.dtype
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj).astype(kind)),
                "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def from_plain(obj: Any) -> Any:
    """Undo `to_plain`."""
    if isinstance(obj, dict):
        if "__ndarray__" in obj and "dtype" in obj:
            return obj["__ndarray__"].numpy().astype(np.dtype(obj["dtype"]))
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_plain(v) for v in obj)
    return obj


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write `state` (plus the format version) to `path`. A write the system
    refuses (a full disk) is an `OutputError` that says the file written before is whole."""
    buffer = io.BytesIO()
    torch.save(to_plain({"format_version": FORMAT_VERSION, **state}), buffer)
    try:
        return atomic_write_bytes(path, buffer.getvalue())
    except OutputError as err:
        kept = ("the previous version of the file is intact" if Path(path).is_file() else
                "no earlier version of the file exists")
        raise OutputError(err.path, f"{err}; {kept}", err.errno) from None


def read_checkpoint(path: str | Path, require: tuple[str, ...] = ()) -> dict[str, Any]:
    """The dict stored in checkpoint file `path`, on the CPU, with NumPy arrays restored.

    Raises `CheckpointError` naming the file when it is missing, is not a torch archive
    (random bytes, text), is damaged (a member fails its CRC check, a truncated copy, an
    unreadable pickle), holds pickled objects a safe load refuses, or lacks one of the keys
    in `require`.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give a .pt file or a run "
                              "directory's path to the commands that take one")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        if _starts_as_zip(path):
            raise CheckpointError(f"checkpoint {path} is truncated (a torch.save archive whose "
                                  f"end is missing); {RESTORE}")
        raise CheckpointError(f"checkpoint {path} is not a torch checkpoint (not a torch.save "
                              "archive): it is truncated or another kind of file")
    _check_archive(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _pickle_is_whole(path):  # torch's message would blame a "global", or advise
            raise CheckpointError(f"checkpoint {path} is damaged: its pickle (data.pkl) "
                                  f"does not parse; {RESTORE}") from None
        if "weights_only" in str(err).lower():
            raise CheckpointError(
                f"checkpoint {path} holds Python objects other than tensors and plain "
                "containers, which a safe load refuses; betaweighter checkpoints hold only "
                "tensors, numbers, strings, lists and dicts") from None
        raise CheckpointError(_corrupt(path, err)) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError,
            IndexError, TypeError, AttributeError) as err:
        raise CheckpointError(_corrupt(path, err)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not the dict "
                              "betaweighter writes")
    missing = [k for k in require if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing} (it has "
                              f"{sorted(map(str, obj))}); it was not written by betaweighter "
                              "or by a version that stored other things")
    return from_plain(obj)


RESTORE = "restore it from a copy or start a new run"


def _corrupt(path: Path, err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return (f"checkpoint {path} is damaged: it cannot be read ({type(err).__name__}: "
            f"{first}); {RESTORE}")


def _starts_as_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _check_archive(path: Path) -> None:
    """Every member of the archive against its CRC: one `CheckpointError` naming the first
    damaged member."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError,
            NotImplementedError) as err:
        raise CheckpointError(f"checkpoint {path} is damaged: its archive cannot be read "
                              f"({type(err).__name__}: {err}); {RESTORE}") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: member {bad} fails its CRC "
                              f"check; {RESTORE}")


def _pickle_is_whole(path: Path) -> bool:
    """True when the archive's pickle parses to its end (so a refusal is about what it
    holds, not about damage). Only parsed, never run."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            for _ in pickletools.genops(archive.read(name)):
                pass
    except Exception:  # whatever stops the parse (ValueError, struct.error...): damaged
        return False
    return True


def resolve_checkpoint(path_or_run_dir: str | Path, which: str | None = None) -> Path:
    """The checkpoint file that `path_or_run_dir` designates.

    A file is returned as is. A directory (a run directory or its ``checkpoints`` folder) is
    searched for ``which`` (``"best"`` or ``"last"``) or, when None, ``best.pt`` then
    ``last.pt``.
    """
    path = Path(path_or_run_dir).expanduser()
    if path.is_file():
        return path
    names = CHECKPOINT_NAMES if which is None else (f"{which}.pt",)
    if path.is_dir():
        for folder in (path / "checkpoints", path):
            for name in names:
                if (folder / name).is_file():
                    return folder / name
        raise CheckpointError(
            f"no checkpoint in {path}: expected {path / 'checkpoints' / names[0]}. Pass a run "
            "directory written by `betaweighter run`, or the checkpoint file itself.")
    raise CheckpointError(f"checkpoint {path} does not exist; check the path (a .pt file or a "
                          "run directory)")


def rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch (and CUDA) random states, for exact resumption."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),  # noqa: NPY002
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def all_rng_states() -> list[dict[str, Any]] | None:
    """Every process's `rng_state`, in rank order, under torch.distributed (a collective:
    call it on every rank); None outside a distributed run."""
    from betaweighter.runtime import world

    size = world()[0]
    if size == 1:
        return None
    states: list[Any] = [None] * size
    torch.distributed.all_gather_object(states, rng_state())
    return states


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]) if isinstance(py, (list, tuple)) else py)
    np.random.set_state(tuple(state["numpy"]) if isinstance(state["numpy"], list)  # noqa: NPY002
                        else state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
