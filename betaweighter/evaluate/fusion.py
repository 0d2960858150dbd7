"""Fused backbones: the features of several pre-trained models, side by side.

Ericsson, Gouk and Hospedales (arXiv:2111.11398) find that downstream tasks want opposite
invariances (pose-sensitive against colour-sensitive, say), so no single augmentation
policy wins everywhere, and that concatenating the frozen features of models pre-trained
with complementary augmentations transfers well to all of them. Their ``ModelCombiner``
runs each member in eval mode, detaches its features and combines them by concatenation
(``cat``, the default), sum (``add``) or mean (``mean``), with no per-member normalisation.
`FusedBackbone` does the same as an ``nn.Module`` with ``features(x)``, so the linear,
few-shot and invariance evaluators take it like any backbone. Detection cannot (Faster
R-CNN builds its feature pyramid from one ResNet trunk), and fine-tuning is off unless
asked for (the paper only fuses frozen features).

All members see the same input tensor, so they must expect the same input normalisation:
members whose ``data_config`` declare different means or standard deviations are refused.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from betaweighter.errors import ConfigError

__all__ = ["FUSION_MODES", "FusedBackbone", "fuse"]

FUSION_MODES = ("cat", "add", "mean")


class FusedBackbone(nn.Module):
    """``features(x)`` = the members' features combined by `mode`.

    ``feature_dim`` is the sum of the members' (``cat``) or their common width (``add``,
    ``mean``); ``data_config`` is the members' shared input description. Frozen (the
    default): the members' parameters do not require gradients, they stay in eval mode
    whatever ``train()`` says, and their features are detached. ``grid_shift`` (members - 1)
    shifts the linear probe's regularisation grid as the paper does for fused features.
    """

    def __init__(self, members: Sequence[nn.Module], mode: str = "cat",
                 trainable: bool = False) -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise ConfigError(f"fusion mode must be one of {FUSION_MODES}, got {mode!r}")
        if len(members) < 1:
            raise ConfigError("fuse needs at least one backbone")
        for i, m in enumerate(members):
            if not callable(getattr(m, "features", None)):
                raise TypeError(f"member {i} ({type(m).__name__}) has no features(x)")
        self.members = nn.ModuleList(members)
        self.mode = mode
        self.trainable = bool(trainable)
        dims: list[Any] = [getattr(m, "feature_dim", None) for m in members]
        if mode != "cat" and None not in dims and len(set(dims)) > 1:
            raise ConfigError(f"fusion mode {mode!r} needs members of one width, got feature "
                              f"dimensions {dims}; use mode='cat'")
        if None in dims:
            self.feature_dim: int | None = None
        else:
            self.feature_dim = int(sum(dims)) if mode == "cat" else int(dims[0])
        self.data_config = _shared_input(members)
        if not self.trainable:
            for p in self.members.parameters():
                p.requires_grad_(False)
            self.members.eval()

    @property
    def grid_shift(self) -> int:
        return len(self.members) - 1

    def train(self, mode: bool = True) -> FusedBackbone:
        super().train(mode)
        if not self.trainable:
            self.members.eval()
        return self

    def features(self, x: Tensor) -> Tensor:
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            feats = [m.features(x).flatten(1) for m in self.members]  # type: ignore[operator]  # Module.__getattr__
        if self.mode == "cat":
            return torch.cat(feats, dim=1)
        if len({f.shape[1] for f in feats}) > 1:
            raise ValueError(f"fusion mode {self.mode!r} needs members of one width, got "
                             f"{[f.shape[1] for f in feats]}")
        total = torch.stack(feats).sum(0)
        return total / len(feats) if self.mode == "mean" else total

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def _shared_input(members: Sequence[nn.Module]) -> dict[str, Any] | None:
    """The one input description of the members (None if none declares one)."""
    configs = [(i, getattr(m, "data_config", None)) for i, m in enumerate(members)]
    known = [(i, c) for i, c in configs if isinstance(c, dict)]
    if not known:
        return None
    first_i, first = known[0]
    for i, c in known[1:]:
        for key in ("mean", "std"):
            a, b = first.get(key), c.get(key)
            if a is not None and b is not None and not np.allclose(a, b, rtol=0, atol=1e-6):
                raise ConfigError(
                    f"cannot fuse: member {first_i} expects input normalised with {key} "
                    f"{list(a)}, member {i} with {list(b)}. A fused backbone feeds one "
                    "input tensor to every member, so they must share the normalisation "
                    "they were trained with: fuse models pre-trained on the same data "
                    "statistics")
        if c.get("image_size") != first.get("image_size"):
            warnings.warn(f"fused members were trained on different image sizes "
                          f"({first.get('image_size')} and {c.get('image_size')}); "
                          f"evaluating at member {first_i}'s", stacklevel=3)
    return dict(first)


def fuse(backbones: Sequence[nn.Module | str | os.PathLike], mode: str = "cat", *,
         trainable: bool = False, device: Any = None) -> FusedBackbone:
    """A `FusedBackbone` of `backbones` (modules with ``features(x)``, or checkpoint files
    and run directories, loaded with `betaweighter.models.load_backbone`).

    ``mode``: ``"cat"`` (concatenate; the paper's default), ``"add"`` or ``"mean"``.
    With ``trainable=True`` the members keep their gradients, so fine-tuning trains them
    jointly (not a protocol of the paper).
    """
    from betaweighter.models import load_backbone

    # cast: load_backbone takes any os.PathLike (it calls Path() on it)
    members = [load_backbone(cast(Any, b), device) if isinstance(b, (str, os.PathLike)) else b
               for b in backbones]
    return FusedBackbone(members, mode, trainable)
