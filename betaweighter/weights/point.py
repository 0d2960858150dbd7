"""Deterministic per-instance weights: the paper's DW baseline.

One learnable scalar per instance, meta-learned exactly like BDW but without a
distribution: `sample` returns the value itself, kept in [0, 1] by projection after every
step. A point weight has no spread, so `cdf` is a step function (pruning by CDF reduces to
a threshold on the value).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from betaweighter.weights.base import LearnedWeights, register_weighting

__all__ = ["PointWeights"]


@register_weighting("dw")
class PointWeights(LearnedWeights):
    """One scalar weight per instance in [0, 1], initialised to `init` (default 0.5, the
    mean of BDW's Beta(1, 1) start so the two begin at the same effective step size)."""

    row_parameters = ("value",)

    def __init__(self, num_instances: int, init: float = 0.5) -> None:
        super().__init__(num_instances)
        if not 0.0 <= init <= 1.0:  # also refuses NaN
            raise ValueError(f"init must be in [0, 1], got {init}")
        self.init = float(init)
        self.value = nn.Parameter(torch.full((num_instances,), float(init)))

    def sample(self, indices: Tensor, losses: Tensor | None = None) -> Tensor:
        return self.value[self._rows(indices)]

    @torch.no_grad()
    def project_(self) -> None:
        torch.nan_to_num_(self.value, nan=0.5)
        self.value.clamp_(0.0, 1.0)

    @torch.no_grad()
    def mean(self, indices: Tensor | None = None) -> Tensor:
        return self.value[self._rows(indices)].clone()

    @torch.no_grad()
    def std(self, indices: Tensor | None = None) -> Tensor:
        return torch.zeros_like(self.value[self._rows(indices)])
