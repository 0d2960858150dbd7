"""Learning to Reweight Examples (L2RW; Ren, Zeng, Yang and Urtasun, ICML 2018).

L2RW keeps no learnt weights. At every step it perturbs each instance's weight around
zero, eps_i = 0, takes the meta-gradient g_i = dM/d(eps_i) of the target objective M at
the parameters one virtual step ahead, and trains the real step with

    w_i = max(-g_i, 0) / sum_j max(-g_j, 0)       (uniform when every g_i >= 0),

so an instance counts in proportion to how much its gradient agrees with the target's.
Unlike BDW's single pass, the real step waits for the meta-gradient (two passes). The
reference code of Ericsson et al. computed these weights but never stepped the model with
them (bdw_spec.md, section 2); here `MetaWeighter` does the real weighted step.

How it maps onto `MetaWeighter`:

* `sample` returns zeros that require grad: with w = 0 the virtual step sees a zero loss
  gradient, which is exactly the eps = 0 perturbation, and `MetaWeighter` returns
  g = dM/dw for it (forward mode or double backward alike).
* `reweight` turns g into the weights of the real step. They are scaled to sum to the
  batch size B (mean 1): MetaWeighter's plain mean over the rows then equals L2RW's
  weighted average sum_i w~_i l_i with sum_i w~_i = 1 (l_i averaged over the instance's
  copies), and the step has the same size as the uniform control's.
* Because nothing persists between steps, `mean` reports a bias-corrected exponential
  moving average of the weights each instance was actually given (1, the uniform
  control's weight, before its first visit), so pruning and plots can treat L2RW like the
  other methods. `std` is zero and `cdf` thresholds that average (the point-mass fallback
  of `InstanceWeights`).

Constraints: every `MetaWeighter.backward` call must be a meta step (``every=1``), since
outside one L2RW has no weights to give; ``strict`` turns a violation into an error.
Use the plain-mean loss (``normalise=False``, the default): the weights above already form
a weighted average. A loss normalised by the sum of the weights is 0 / 0 at w = 0: the
forward-mode meta-gradient comes back NaN and `reweight` raises; the double backward, whose
normaliser is clamped away from zero, returns a huge gradient with the right direction,
which is all L2RW uses, so ``meta_gradient="double_backward"`` gives the same weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from betaweighter.weights.base import InstanceWeights


class L2RW(InstanceWeights):
    """Per-step weights from the sign of the look-ahead meta-gradient (Ren et al., 2018).

    Args:
        num_instances: size of the unlabelled pool.
        smoothing: decay of the per-instance moving average reported by `mean`
            (0 reports the last weight given; 0.9 averages over roughly the last ten
            visits). Bias-corrected, so the first visit reports that visit's weight.
        strict: raise when `sample` is called twice without a `reweight` in between, the
            sign of ``MetaWeighter(every > 1)``, whose skipped calls would train on zero
            weights. Turn off only to call `sample` outside `MetaWeighter` (the result is
            the perturbation point, zeros).

    Attributes:
        last_weights: the weights of the most recent real step (mean 1), for inspection.
    """

    learnable = True
    two_pass = True

    def __init__(self, num_instances: int, smoothing: float = 0.9, strict: bool = True) -> None:
        super().__init__(num_instances)
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = float(smoothing)
        self.strict = bool(strict)
        self.register_buffer("average", torch.zeros(num_instances))
        self.register_buffer("visits", torch.zeros(num_instances, dtype=torch.long))
        self.last_weights: Tensor | None = None
        self._pending: Tensor | None = None

    def sample(self, indices: Tensor, losses: Tensor | None = None) -> Tensor:
        rows = self._rows(indices)
        if self.strict and self._pending is not None:
            raise RuntimeError(
                "L2RW.sample was called again before the previous batch was reweighted: L2RW "
                "has weights only inside a meta step, so MetaWeighter must run one on every "
                "call (every=1). Otherwise the calls without a meta step would train on zero "
                "weights. Construct L2RW(..., strict=False) only to call sample outside "
                "MetaWeighter."
            )
        self._pending = rows
        return torch.zeros(rows.numel(), device=self.device, dtype=self.average.dtype,
                           requires_grad=True)

    @torch.no_grad()
    def reweight(self, weights: Tensor, meta_grad: Tensor) -> Tensor:
        """L2RW's weights from g = dM/dw at w = 0: max(-g, 0), scaled to sum to the batch
        size (all ones when no instance has a negative meta-gradient)."""
        if not torch.isfinite(meta_grad).all():
            self._pending = None
            raise ValueError(
                "L2RW got a non-finite meta-gradient. Its perturbation sits at w = 0, where "
                "a loss normalised by the sum of the weights is 0 / 0: use "
                "MetaWeighter(normalise=False) (L2RW's weights are already a weighted "
                "average; or meta_gradient='double_backward'), and check the model and "
                "objective for NaNs."
            )
        w = (-meta_grad).clamp_min(0.0)
        peak = w.max()
        if peak > 0:
            w = w / peak  # first, so that the sum cannot overflow
            w = w * (w.numel() / w.sum())
        else:
            w = torch.ones_like(w)
        self._record(w)
        self.last_weights = w.clone()
        return w

    def _record(self, w: Tensor) -> None:
        rows, self._pending = self._pending, None
        if rows is None or rows.numel() != w.numel():
            return
        w = w.to(self.average)
        if rows.unique().numel() == rows.numel():
            self.average[rows] = self.smoothing * self.average[rows] + (1 - self.smoothing) * w
            self.visits[rows] += 1
            return
        for i, wi in zip(rows.tolist(), w.tolist()):  # an instance twice: one visit each
            self.average[i] = self.smoothing * self.average[i] + (1 - self.smoothing) * wi
            self.visits[i] += 1

    @torch.no_grad()
    def mean(self, indices: Tensor | None = None) -> Tensor:
        """Bias-corrected moving average of the weights each instance was given (1 for an
        instance not visited yet: the uniform control's weight)."""
        rows = self._rows(indices)
        avg, visits = self.average[rows], self.visits[rows]
        correction = 1.0 - self.smoothing ** visits.to(avg.dtype)
        out = avg / correction.clamp_min(torch.finfo(avg.dtype).tiny)
        return torch.where(visits > 0, out, torch.ones_like(out))

    @torch.no_grad()
    def std(self, indices: Tensor | None = None) -> Tensor:
        return torch.zeros_like(self.average[self._rows(indices)])
