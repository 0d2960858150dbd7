"""Learning to Reweight Examples (L2RW; Ren, Zeng, Yang and Urtasun, ICML 2018).

L2RW keeps no learnt weights. At every step it perturbs each instance's weight around
zero, eps_i = 0, takes the meta-gradient g_i = dM/d(eps_i) of the target objective M at
the parameters one virtual step ahead, and trains the real step with

    w_i = max(-g_i, 0) / sum_j max(-g_j, 0)       (uniform when every g_i >= 0),

so an instance counts in proportion to how much its gradient agrees with the target's.
Unlike BDW's single pass, the real step waits for the meta-gradient: `MetaWeighter`
computes g at w = 0 first and hands it to `L2RW.weights` explicitly, then runs the real
backward with the weights it returns. The reference code of Ericsson et al. computed these
weights but never stepped the model with them; here the model really steps.

The weights are scaled to sum to the batch size B (mean 1): `MetaWeighter`'s plain mean
over the rows then equals L2RW's weighted average sum_i w~_i l_i with sum_i w~_i = 1
(l_i averaged over the instance's copies), and the step has the same size as the uniform
control's. Because nothing persists between steps, `mean` reports a bias-corrected
exponential moving average of the weights each instance was actually given (1, the
uniform control's weight, before its first visit), so pruning and plots can treat L2RW
like the other methods; `std` is zero.

L2RW needs a meta step on every call (``MetaWeighter(every=1)``) and the plain-mean loss
(``normalise=False``: a loss divided by the sum of the weights is 0 / 0 at w = 0).
`MetaWeighter` refuses other settings when it is built.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from betaweighter.weights.base import WeightRule, register_weighting
from betaweighter.weights.running import running_average, update_running_average

__all__ = ["L2RW"]


@register_weighting("l2rw")
class L2RW(WeightRule):
    """Per-step weights from the sign of the look-ahead meta-gradient (Ren et al., 2018).

    Args:
        num_instances: size of the unlabelled pool.
        smoothing: decay of the per-instance moving average reported by `mean` (0 reports
            the last weight given; 0.9 averages over roughly the last ten visits).
            Bias-corrected, so the first visit reports that visit's weight.
    """

    needs_meta_gradient = True

    average: Tensor
    visits: Tensor

    def __init__(self, num_instances: int, smoothing: float = 0.9) -> None:
        super().__init__(num_instances)
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = float(smoothing)
        self.register_buffer("average", torch.zeros(num_instances))
        self.register_buffer("visits", torch.zeros(num_instances, dtype=torch.long))

    @torch.no_grad()
    def weights(self, indices: Tensor, losses: Tensor | None = None, *, step: int = 0,
                meta_grad: Tensor | None = None) -> Tensor:
        """max(-g, 0) scaled to sum to the batch size (all ones when no instance has a
        negative meta-gradient), from `meta_grad` = dM/dw at w = 0; recorded for `mean`."""
        rows = cast(Tensor, self._rows(indices))  # a Tensor, as `indices` is one
        if meta_grad is None:
            raise ValueError("L2RW needs the batch's meta-gradient at w = 0 (meta_grad=...); "
                             "use it through MetaWeighter, which computes it")
        meta_grad = torch.as_tensor(meta_grad).reshape(-1)
        if meta_grad.numel() != rows.numel():
            raise ValueError(f"meta_grad has {meta_grad.numel()} entries for {rows.numel()} "
                             "indices")
        if not torch.isfinite(meta_grad).all():
            raise ValueError("L2RW got a non-finite meta-gradient: check the model and the "
                             "objective for NaNs (and use MetaWeighter(normalise=False))")
        w = (-meta_grad).clamp_min(0.0)
        peak = w.max()
        if peak > 0:
            w = w / peak  # first, so that the sum cannot overflow
            w = w * (w.numel() / w.sum())
        else:
            w = torch.ones_like(w)
        update_running_average(self.average, self.visits, rows, w, self.smoothing)
        return w

    @torch.no_grad()
    def mean(self, indices: Tensor | None = None) -> Tensor:
        """Bias-corrected moving average of the weights each instance was given (1 for an
        instance not visited yet: the uniform control's weight)."""
        return running_average(self.average, self.visits, self._rows(indices), self.smoothing,
                               unseen=1.0)

    @torch.no_grad()
    def std(self, indices: Tensor | None = None) -> Tensor:
        return torch.zeros_like(self.average[self._rows(indices)])
