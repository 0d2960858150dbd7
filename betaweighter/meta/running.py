"""The running meta direction: a bias-corrected moving average of the episodes' directions.

One episode's meta direction v = dM/dtheta' is mostly noise (its repeatability across
episodes is near 0 on the demo set); the average over recent episodes keeps the part that
repeats. `MetaWeighter(direction="running")` moves the weights of every batch along it,
while a fresh episode refreshes it on every `every`-th call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["RunningDirection"]


class RunningDirection:
    """sum_t decay^(T-t) (1 - decay) v_t, divided by its total weight (as Adam's bias
    correction), per parameter name."""

    def __init__(self, decay: float = 0.9) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"direction_decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self._sum: dict[str, Tensor] | None = None
        self._weight = 0.0

    @property
    def empty(self) -> bool:
        """No direction folded in yet."""
        return self._sum is None

    def update(self, v: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fold a fresh direction in; return the average."""
        if self._sum is None:
            self._sum = {n: torch.zeros_like(t) for n, t in v.items()}
        for n, t in v.items():
            self._sum[n].mul_(self.decay).add_(t, alpha=1 - self.decay)
        self._weight = self.decay * self._weight + (1 - self.decay)
        return self.get(list(v))

    def get(self, names: list[str]) -> dict[str, Tensor]:
        """The average for the parameters `names` (those folded in)."""
        if self._sum is None:
            raise RuntimeError("the running direction is empty: update() it first")
        return {n: self._sum[n] / self._weight for n in names if n in self._sum}

    def state_dict(self) -> dict[str, Any] | None:
        if self._sum is None:
            return None
        return {"sum": {n: t.clone() for n, t in self._sum.items()}, "weight": self._weight}

    def load_state_dict(self, state: dict[str, Any] | None,
                        like: dict[str, Tensor]) -> None:
        """Restore; `like` maps names to tensors on the device and dtype to use."""
        if state is None:
            self._sum, self._weight = None, 0.0
            return
        self._sum = {n: t.to(like[n]) for n, t in state["sum"].items()}
        self._weight = float(state["weight"])
