"""All-ones weights: plain rotation prediction (RotNet, Gidaris et al., ICLR 2018), the
control every weighting method is compared against. Nothing is learnt."""

from __future__ import annotations

import torch
from torch import Tensor

from betaweighter.weights.base import WeightRule, register_weighting

__all__ = ["UniformWeights"]


@register_weighting("rotnet")
class UniformWeights(WeightRule):
    """Weight 1 for every instance at every step."""

    _ones: Tensor

    def __init__(self, num_instances: int) -> None:
        super().__init__(num_instances)
        # A buffer only so that the weights follow `.to(device)` and have a state_dict.
        self.register_buffer("_ones", torch.ones(num_instances))

    def weights(self, indices: Tensor, losses: Tensor | None = None, *, step: int = 0,
                meta_grad: Tensor | None = None) -> Tensor:
        return self._ones[self._rows(indices)].clone()

    def mean(self, indices: Tensor | None = None) -> Tensor:
        return self._ones[self._rows(indices)].clone()

    def std(self, indices: Tensor | None = None) -> Tensor:
        return torch.zeros_like(self._ones[self._rows(indices)])
