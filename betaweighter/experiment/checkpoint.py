"""Checkpoints: everything needed to resume a run exactly, written atomically.

A checkpoint is a ``torch.save`` dict. The keys ``model`` (state dict) and
``model_config`` (keyword arguments of `betaweighter.models.build_model`) are the contract
the transfer evaluators rely on; the rest (optimiser, schedulers, weights and their
optimiser, pruning state, RNG states, epoch, step) is what `--resume` needs.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from betaweighter.evaluate.checkpoint import CheckpointError, read_checkpoint
from betaweighter.experiment.rundir import atomic_write_bytes

__all__ = ["CheckpointError", "load_checkpoint", "rng_state", "save_checkpoint",
           "set_rng_state"]

FORMAT_VERSION = 1
REQUIRED = ("format_version", "epoch", "config", "optimizer", "weights", "rng")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),  # noqa: NPY002
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_plain(obj: Any) -> Any:
    """Replace numpy arrays and scalars by tensors and Python numbers (recursively), so the
    file loads with ``torch.load(weights_only=True)``: no pickled code runs on reading."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj).astype(
            np.int64 if obj.dtype.kind in "iu" else obj.dtype)), "dtype": obj.dtype.str}
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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write `state` (plus the format version) to `path`."""
    buffer = io.BytesIO()
    torch.save(to_plain({"format_version": FORMAT_VERSION, **state}), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a run checkpoint safely (``weights_only``), or raise CheckpointError saying what
    is wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist: give a run directory "
                              "with checkpoints/last.pt or the path of a .pt file")
    state = from_plain(read_checkpoint(path, weights_only=True))
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {missing}: it holds a backbone "
                              "but not the training state needed to resume")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format version "
                              f"{state['format_version']}, this betaweighter reads "
                              f"{FORMAT_VERSION}")
    if map_location != "cpu":
        state["model"] = {k: v.to(map_location) for k, v in state["model"].items()}
    return state
