"""Load a pre-trained `Backbone` from a checkpoint file or a run directory.

A checkpoint is a ``torch.save``'d dict with at least ``"model"`` (the Backbone's
state_dict) and ``"model_config"`` (keyword arguments of `betaweighter.models.build_model`).
A run directory holds ``checkpoints/best.pt`` and ``checkpoints/last.pt``. Every failure
(missing file, unreadable file, weights that do not fit the declared architecture) raises
`CheckpointError` naming the file and saying how to fix it, instead of the original research
code's silent ``strict=False`` loads.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from betaweighter.evaluate._runtime import resolve_device
from betaweighter.models import Backbone, build_model

CHECKPOINT_NAMES = ("best.pt", "last.pt")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


class CheckpointError(ValueError):
    """A checkpoint cannot be found, read or matched to its declared architecture."""


def resolve_checkpoint(path_or_run_dir: str | Path) -> Path:
    """The checkpoint file that `path_or_run_dir` designates.

    A file is returned as is. A directory is searched for ``checkpoints/best.pt``, then
    ``checkpoints/last.pt``, then ``best.pt`` and ``last.pt`` directly inside it (so the
    ``checkpoints`` folder itself can be given).
    """
    path = Path(path_or_run_dir).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for folder in (path / "checkpoints", path):
            for name in CHECKPOINT_NAMES:
                if (folder / name).is_file():
                    return folder / name
        raise CheckpointError(
            f"no checkpoint in {path}: expected {path / 'checkpoints' / 'best.pt'} or "
            f"{path / 'checkpoints' / 'last.pt'}. Pass a run directory written by the "
            "experiment runner, or the checkpoint file itself."
        )
    raise CheckpointError(f"checkpoint {path} does not exist; check the path (a .pt file or a "
                          "run directory containing checkpoints/best.pt)")


def read_checkpoint(path: str | Path, *, weights_only: bool = True) -> dict[str, Any]:
    """The dict stored in checkpoint file `path`, loaded onto the CPU.

    ``weights_only=True`` (the default) refuses arbitrary pickled Python objects, which
    could run code; pass ``False`` only for a file you trust.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {path} does not exist") from err
    except pickle.UnpicklingError as err:
        if weights_only and "weights_only" in str(err).lower():
            raise CheckpointError(
                f"checkpoint {path} contains Python objects other than tensors and plain "
                "containers, which a safe load refuses. If you trust the file, load it with "
                "weights_only=False (load_backbone(..., weights_only=False)); better, save "
                "only tensors, numbers, strings, lists and dicts in checkpoints."
            ) from err
        raise CheckpointError(_corrupt(path, err)) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError,
            IndexError, TypeError, AttributeError) as err:  # garbage makes the unpickler fail
        raise CheckpointError(_corrupt(path, err)) from err                # in many ways
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a dict with 'model' and "
            "'model_config'; it was not written by betaweighter's experiment runner"
        )
    for key in ("model", "model_config"):
        if key not in obj:
            raise CheckpointError(
                f"checkpoint {path} has no {key!r} entry (it has {sorted(map(str, obj))}); "
                "betaweighter checkpoints store the backbone's state_dict under 'model' and "
                "build_model's keyword arguments under 'model_config'"
            )
    if not isinstance(obj["model_config"], dict) or "name" not in obj["model_config"]:
        raise CheckpointError(
            f"checkpoint {path}: 'model_config' must be a dict with at least 'name' "
            f"(e.g. {{'name': 'resnet18', 'num_classes': 4}}), got {obj['model_config']!r}"
        )
    return obj


def load_backbone(path_or_run_dir: str | Path, device: str | torch.device | None = None, *,
                  weights_only: bool = True) -> Backbone:
    """Rebuild the checkpoint's `Backbone` from its ``model_config`` and load its weights.

    The load is strict: a missing, unexpected or wrongly shaped tensor raises
    `CheckpointError` listing them. A ``module.`` (DistributedDataParallel) or
    ``_orig_mod.`` (torch.compile) prefix on every key is removed first. The model is
    returned in eval mode on `device` (default: the GPU when there is one).
    """
    path = resolve_checkpoint(path_or_run_dir)
    ckpt = read_checkpoint(path, weights_only=weights_only)
    config = dict(ckpt["model_config"])
    try:
        model = build_model(**config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {path}: cannot build the declared architecture {config}: {err}"
        ) from err
    state = _strip_wrappers(ckpt["model"], path)
    problems = _mismatches(model.state_dict(), state)
    if problems:
        raise CheckpointError(
            f"checkpoint {path}: its 'model' weights do not match the declared architecture "
            f"{config} ({'; '.join(problems)}). The 'model_config' entry probably describes "
            "another network: fix it, or evaluate the checkpoint of the matching run."
        )
    model.load_state_dict(state, strict=True)
    return model.to(resolve_device(device)).eval()


def _corrupt(path: Path, err: BaseException) -> str:
    other = "best.pt" if path.name == "last.pt" else "last.pt"
    return (f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); the file is "
            f"truncated or not a torch.save file. Re-copy it, or use checkpoints/{other}.")


def _strip_wrappers(state: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"checkpoint {path}: 'model' is not a state_dict "
                              f"(got {type(state).__name__})")
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _mismatches(expected: dict[str, torch.Tensor], got: dict[str, Any]) -> list[str]:
    def show(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k}: {tuple(getattr(got[k], 'shape', ()))} in file vs {tuple(v.shape)} in model"
              for k, v in expected.items()
              if k in got and (not isinstance(got[k], torch.Tensor) or got[k].shape != v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {show(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {show(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {show(shapes)}")
    return problems
