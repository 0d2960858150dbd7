"""Backbones split into ``features(x)`` (an embedding per image) and a ``head``.

The pretext task trains ``head(features(x))``; meta objectives and transfer evaluators use
``features`` alone. All are randomly initialised: nothing is downloaded. `load_backbone`
rebuilds a pre-trained backbone from a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from betaweighter.checkpoint import read_checkpoint, resolve_checkpoint
from betaweighter.errors import CheckpointError
from betaweighter.runtime import resolve_device

__all__ = ["ARCHITECTURES", "Backbone", "build_model", "conv_net", "load_backbone", "resnet"]

ARCHITECTURES = ("convnet", "resnet18", "resnet50")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


class Backbone(nn.Module):
    """``forward(x) = head(features(x))``; ``feature_dim`` is the embedding size.

    ``data_config`` records the input the backbone was trained on (``image_size``,
    ``mean``, ``std``) when it was loaded from a checkpoint that stores it, else None.
    """

    feature_dim: int

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_dim = int(feature_dim)
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.data_config: dict[str, Any] | None = None

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def conv_net(num_classes: int = 4, in_channels: int = 3, width: int = 64,
             blocks: int = 4) -> Backbone:
    """The small 4-block conv net of few-shot learning (Vinyals et al., NeurIPS 2016):
    conv3x3-BN-ReLU-maxpool blocks, then global average pooling (so any input size works)."""
    if blocks < 1 or width < 1:
        raise ValueError(f"blocks and width must be >= 1, got {blocks} and {width}")
    layers = [_conv_block(in_channels, width)]
    layers += [_conv_block(width, width) for _ in range(blocks - 1)]
    encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
    return Backbone(encoder, width, num_classes)


def resnet(arch: str = "resnet18", num_classes: int = 4) -> Backbone:
    """torchvision ResNet-18/50 with the standard ImageNet stem, randomly initialised;
    `features` is everything up to the global pool (512-d or 2048-d)."""
    if arch not in ("resnet18", "resnet50"):
        raise ValueError(f"arch must be 'resnet18' or 'resnet50', got {arch!r}")
    net = getattr(torchvision.models, arch)(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return Backbone(net, dim, num_classes)


def build_model(name: str, num_classes: int = 4, **kwargs: Any) -> Backbone:
    """Build a backbone by name: one of ARCHITECTURES."""
    if name == "convnet":
        return conv_net(num_classes, **kwargs)
    if name in ("resnet18", "resnet50"):
        if kwargs:
            raise ValueError(f"{name} takes no options, got {sorted(kwargs)}")
        return resnet(name, num_classes)
    raise ValueError(f"unknown model {name!r}; choose one of {ARCHITECTURES}")


def load_backbone(path_or_run_dir: str | Path, device: str | torch.device | None = None,
                  which: str | None = None) -> Backbone:
    """Rebuild a checkpoint's `Backbone` from its ``model_config`` and load its weights.

    `path_or_run_dir` is a ``.pt`` file or a run directory (its ``best.pt``, else
    ``last.pt``; `which` picks one). The load is strict: a missing, unexpected or wrongly
    shaped tensor raises `CheckpointError` listing them. A ``module.`` (DDP) or
    ``_orig_mod.`` (torch.compile) prefix on every key is removed first. The model comes
    back in eval mode on `device` (default: the GPU when there is one), with
    ``data_config`` set from the checkpoint.
    """
    path = resolve_checkpoint(path_or_run_dir, which)
    ckpt = read_checkpoint(path, require=("model", "model_config"))
    config = ckpt["model_config"]
    if not isinstance(config, dict) or "name" not in config:
        raise CheckpointError(f"checkpoint {path}: 'model_config' must be a dict with at least "
                              f"'name' (e.g. {{'name': 'resnet18'}}), got {config!r}")
    try:
        model = build_model(**config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: cannot build the declared architecture "
                              f"{config}: {err}") from None
    state = _strip_wrappers(ckpt["model"], path)
    problems = _mismatches(model.state_dict(), state)
    if problems:
        raise CheckpointError(
            f"checkpoint {path}: its 'model' weights do not match the declared architecture "
            f"{config} ({'; '.join(problems)}). The 'model_config' entry probably describes "
            "another network: fix it, or evaluate the checkpoint of the matching run.")
    model.load_state_dict(state, strict=True)
    data_config = ckpt.get("data_config")
    model.data_config = dict(data_config) if isinstance(data_config, dict) else None
    return model.to(resolve_device(device)).eval()


def _strip_wrappers(state: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"checkpoint {path}: 'model' is not a state_dict "
                              f"(got {type(state).__name__})")
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _mismatches(expected: dict[str, Tensor], got: dict[str, Any]) -> list[str]:
    def show(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k}: {tuple(getattr(got[k], 'shape', ()))} in file vs {tuple(v.shape)} in model"
              for k, v in expected.items()
              if k in got and (not isinstance(got[k], Tensor) or got[k].shape != v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {show(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {show(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {show(shapes)}")
    return problems
