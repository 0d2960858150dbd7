"""The interfaces of the weighting methods.

There are two kinds, and `MetaWeighter` treats them differently:

* `LearnedWeights` hold parameters that the bilevel step learns: a distribution per
  instance (`BetaWeights`), a point value per instance (`PointWeights`) or a network
  (`WeightNet`). `sample` returns differentiable weights; a `WeightOptimizer` moves the
  parameters along the meta-gradient.
* `WeightRule` computes each step's weights by a rule, nothing learnt by gradient: uniform
  (RotNet), L2RW (from the meta-gradient at w = 0, handed to it explicitly), loss
  heuristics, nearest-neighbour distances, random controls. `weights` is the one call per
  training step, and the only place a rule may update its running statistics.

Both report per-instance ``mean``, ``std`` and ``cdf`` through `InstanceWeights`, which is
all that pruning, logging and plots read.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from betaweighter.registry import Registry

__all__ = ["WEIGHTINGS", "InstanceWeights", "LearnedWeights", "WeightRule", "register_weighting"]

#: Every weighting method by its ``weights.method`` name.
WEIGHTINGS = Registry("weighting method", "weights.method", package="betaweighter.weights",
                      decorator="register_weighting")
register_weighting = WEIGHTINGS.register

_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class InstanceWeights(nn.Module):
    """Weights for a pool of `num_instances` unlabelled instances, as reported per instance."""

    #: True where `MetaWeighter` must compute the look-ahead's meta-gradient for the method:
    #: every `LearnedWeights`, and rules that read it (L2RW).
    needs_meta_gradient: bool = False
    #: The parameters whose first dimension indexes instances (a `WeightOptimizer` steps
    #: only the batch's rows of them, and DDP gathers those rows); none for a rule.
    row_parameters: tuple[str, ...] = ()

    def __init__(self, num_instances: int) -> None:
        super().__init__()
        if isinstance(num_instances, bool) or int(num_instances) <= 0:
            raise ValueError(f"num_instances must be a positive integer, got {num_instances!r}")
        self.num_instances = int(num_instances)

    # -- what pruning, logging and plots read --------------------------------------------
    def mean(self, indices: Tensor | None = None) -> Tensor:
        """The mean weight of `indices` (all instances when None)."""
        raise NotImplementedError

    def std(self, indices: Tensor | None = None) -> Tensor:
        """The standard deviation of the weight of `indices` (0 for point weights)."""
        raise NotImplementedError

    def cdf(self, value: float, indices: Tensor | None = None) -> Tensor:
        """P(w_i <= value). Deterministic weights are point masses: 1 if w_i <= value."""
        w = self.mean(indices)
        return (w <= value).to(w.dtype)

    def init_cdf(self, value: float) -> float:
        """P(w <= value) before any training, the reference the diagnostics compare the
        learnt weights with; a method with a starting distribution overrides it (BDW's
        Beta), and the default is a weight drawn uniformly from [0, 1]."""
        return min(max(float(value), 0.0), 1.0)

    def fit(self, pool: Any, target: Any, model: nn.Module | None = None) -> InstanceWeights:
        """Look at the data once, before training (a method that embeds the pool overrides
        it: `NearestNeighbourWeights`, `ClusterWeights`); by default nothing."""
        return self

    def on_epoch_end(self, epoch: int | None = None, model: nn.Module | None = None) -> bool:
        """Called after each epoch (e.g. to refresh distances); returns whether anything
        changed. Nothing to do by default."""
        return False

    # -- helpers -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for t in (*self.parameters(), *self.buffers()):
            return t.device
        return torch.device("cpu")

    def _rows(self, indices: Tensor | None) -> Tensor | slice:
        """Validate `indices` (or select all rows when None)."""
        if indices is None:
            return slice(None)
        if isinstance(indices, Tensor) and indices.device.type == "meta":
            raise ValueError("indices are on the 'meta' device, which holds no values: pass "
                             "the batch's real indices (a CPU or GPU integer tensor)")
        indices = torch.as_tensor(indices, device=self.device)
        if indices.dim() != 1 or indices.dtype not in _INDEX_DTYPES:
            raise ValueError(f"indices must be a 1-D integer tensor, got shape "
                             f"{tuple(indices.shape)} and dtype {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_instances):
            raise IndexError(
                f"indices must lie in [0, {self.num_instances}); got values from "
                f"{int(indices.min())} to {int(indices.max())}. Are the indices from a "
                "dataset of another size?")
        return indices.long()


class LearnedWeights(InstanceWeights):
    """Weights with parameters learnt by the bilevel step.

    Their ``row_parameters`` (declared on `InstanceWeights`) are stepped row by row, the
    rest densely.
    """

    needs_meta_gradient = True

    def sample(self, indices: Tensor, losses: Tensor | None = None) -> Tensor:
        """Weights for the instances `indices` (shape (B,)), differentiable w.r.t. the
        parameters. `losses` holds each instance's detached pretext loss, for methods
        whose weight is a function of it. Changes nothing but the random state."""
        raise NotImplementedError

    def observe(self, indices: Tensor, losses: Tensor) -> None:
        """Record the batch's detached per-instance losses (for reporting). No-op unless
        a method reports from them."""

    def regulariser(self, indices: Tensor) -> Tensor:
        """A term added to the meta objective for the batch (zero unless a method has one)."""
        return torch.zeros((), device=self.device)

    @torch.no_grad()
    def project_(self) -> None:
        """Put the parameters back into their valid range after an optimiser step."""


class WeightRule(InstanceWeights):
    """Per-step weights from a rule; nothing learnt by gradient.

    ``needs_meta_gradient`` rules (L2RW) receive, in `weights`, the meta-gradient dM/dw_i
    at w = 0 that `MetaWeighter` computed for the batch just before.
    """

    def weights(self, indices: Tensor, losses: Tensor | None = None, *, step: int = 0,
                meta_grad: Tensor | None = None) -> Tensor:
        """The weights of one training step for instances `indices` (detached, shape (B,)).

        `losses` are the batch's detached per-instance pretext losses, `step` counts the
        training steps (seeds per-step randomness). Rules that keep running statistics
        update them here, so call it once per step.
        """
        raise NotImplementedError
