"""Random weights: the control for any claim that a weighting method picks *useful* data.

A learnt weighting is worth something only if it beats arbitrary non-uniform weights with
the same mean. Two variants, both seeded and with mean 0.5 (BDW's starting mean):

* fixed (default): each instance draws w_i ~ Uniform(0, 1) once, at construction, and
  keeps it: a random but consistent preference, comparable with a learnt weight vector;
* ``resample=True``: a fresh Uniform(0, 1) weight every time an instance is used. This is
  BDW with its Beta(1, 1) initialisation and no learning: the sampling noise alone.

For pruning and plots, `mean` is the fixed weight (0.5 with ``resample``), `std` is 0 for
fixed weights and that of Uniform(0, 1) (1 / sqrt(12)) with ``resample``; `cdf` is a
step on the fixed weight, and P(U <= value) with ``resample``.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor

from betaweighter.weights.base import WeightRule, register_weighting

__all__ = ["RandomWeights"]


@register_weighting("random")
class RandomWeights(WeightRule):
    """Uniform(0, 1) weights that carry no information (a control).

    Args:
        num_instances: size of the unlabelled pool.
        resample: draw new weights at every step instead of once per instance.
        seed: seeds the draws (fixed weights and the per-step stream alike).
    """


    fixed: Tensor

    def __init__(self, num_instances: int, resample: bool = False, seed: int = 0) -> None:
        super().__init__(num_instances)
        self.resample = bool(resample)
        self.seed = int(seed)
        fixed = torch.rand(num_instances, generator=torch.Generator().manual_seed(self.seed))
        self.register_buffer("fixed", fixed if not self.resample else torch.full_like(fixed, 0.5))

    def weights(self, indices: Tensor, losses: Tensor | None = None, *, step: int = 0,
                meta_grad: Tensor | None = None) -> Tensor:
        """The fixed weights, or with ``resample`` fresh ones drawn from (seed, step): a
        pure function of its arguments, so a resumed run draws the same."""
        rows = cast(Tensor, self._rows(indices))  # a Tensor, as `indices` is one
        if not self.resample:
            return self.fixed[rows].clone()
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step) + 1)
        return torch.rand(rows.numel(), generator=g).to(self.fixed)

    def mean(self, indices: Tensor | None = None) -> Tensor:
        return self.fixed[self._rows(indices)].clone()

    def std(self, indices: Tensor | None = None) -> Tensor:
        spread = 1.0 / math.sqrt(12.0) if self.resample else 0.0
        return torch.full_like(self.fixed[self._rows(indices)], spread)

    def cdf(self, value: float, indices: Tensor | None = None) -> Tensor:
        if not self.resample:
            return super().cdf(value, indices)
        return torch.full_like(self.fixed[self._rows(indices)], min(max(float(value), 0.0), 1.0))
