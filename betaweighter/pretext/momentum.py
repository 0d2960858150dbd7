"""Momentum (EMA) target networks: MoCo's key encoder and BYOL's target network.

The target trails the online network by an exponential moving average of its parameters,
theta_t <- m theta_t + (1 - m) theta_o (He et al., "Momentum Contrast for Unsupervised
Visual Representation Learning", CVPR 2020; Grill et al., "Bootstrap Your Own Latent",
NeurIPS 2020). It is never trained by gradient.

How it meets instance weighting. The pretexts compute the target's outputs (BYOL's target
projections, MoCo's keys) once per batch, under ``no_grad``, *before* `MetaWeighter`
runs, and close over them in the per-sample loss. So:

* the training forward, the forward-mode pass of the meta-gradient (which calls the loss
  again) and the look-ahead step all see the same constant targets;
* the target's parameters have ``requires_grad=False`` and no gradient, so neither the
  user's optimiser nor its virtual copy in the look-ahead ever steps them;
* the look-ahead model is the online network at look-ahead parameters; the target is not
  part of it and none of its parameters or buffers change during a meta step.

The EMA update stays the user's own call, after ``optimizer.step()`` (the trainer calls
``Pretext.after_step()``, which calls `MomentumTarget.update`). Buffers (BatchNorm running
statistics) are not averaged: the target's own forwards in train mode keep them, as in
MoCo's key encoder.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from betaweighter.errors import SharedParametersError

__all__ = ["MomentumTarget", "check_separate"]


def _storages(module: nn.Module) -> dict[int, str]:
    out: dict[int, str] = {}
    for kind, items in (("parameter", module.named_parameters(remove_duplicate=False)),
                        ("buffer", module.named_buffers(remove_duplicate=False))):
        for name, t in items:
            if t is not None and t.numel():
                out.setdefault(t.untyped_storage().data_ptr(), f"{kind} {name!r}")
    return out


def check_separate(online: nn.Module, target: nn.Module) -> None:
    """Raise `SharedParametersError` if `target` shares any parameter or buffer memory with
    `online` (``target = online``, a layer used in both, a view of a tensor)."""
    if target is online:
        raise SharedParametersError(
            "the target network is the online network itself: an EMA target must be a "
            "separate copy (bw.pretext.MomentumTarget(online) makes one with copy.deepcopy)")
    mine = _storages(online)
    for ptr, what in _storages(target).items():
        if ptr in mine:
            raise SharedParametersError(
                f"the target network's {what} shares memory with the online network's "
                f"{mine[ptr]}: the target would follow every gradient step instead of "
                "trailing it. Build the target with bw.pretext.MomentumTarget(online), "
                "which deep-copies the online network, or copy.deepcopy it yourself")


class MomentumTarget(nn.Module):
    """A frozen copy of `online` that follows it by EMA with `momentum` m.

    ``target(x)`` runs the copy under ``no_grad``; ``target.update(online)`` moves every
    parameter to ``m * target + (1 - m) * online`` (m = 0: a plain copy, SimSiam-like;
    m = 1: frozen). Pass `target` to use a copy you built yourself; it must not share
    memory with `online` (`SharedParametersError`), and its parameters must match
    `online`'s by name and shape.
    """

    def __init__(self, online: nn.Module, momentum: float = 0.99, *,
                 target: nn.Module | None = None) -> None:
        super().__init__()
        if isinstance(momentum, bool) or not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        net = copy.deepcopy(online) if target is None else target
        check_separate(online, net)
        _check_matching(online, net)
        net.requires_grad_(False)
        self.net = net
        self.momentum = float(momentum)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.net(*args, **kwargs)

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        """One EMA step towards `online` (call it after ``optimizer.step()``)."""
        check_separate(online, self.net)
        mine = dict(online.named_parameters())
        weight = 1.0 - self.momentum
        for name, p in self.net.named_parameters():
            p.lerp_(mine[name].detach().to(p.dtype), weight)

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"


def _check_matching(online: nn.Module, target: nn.Module) -> None:
    a = {n: tuple(p.shape) for n, p in online.named_parameters()}
    b = {n: tuple(p.shape) for n, p in target.named_parameters()}
    if a != b:
        differ = sorted(set(a) ^ set(b)) or sorted(n for n in a if a[n] != b[n])
        raise ValueError(f"the target network's parameters do not match the online "
                         f"network's by name and shape (first differences: {differ[:3]})")
