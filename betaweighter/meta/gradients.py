"""The meta-gradient: how the target objective responds to each instance's weight.

With a weighted training loss L(w) = sum_r w_r l_r / n over the batch's rows, the real
gradient g(w) = dL/dtheta, a virtual step theta' = step(theta, g(w)) of the user's
optimiser, and the meta objective M(theta'), the meta-gradient is dM/dw_r. Four ways:

* ``forward`` (the fast path, exact for one virtual step of any elementwise optimiser):
  the step is elementwise in g, so its Jacobian J = d theta'/d g is diagonal and
  dM/dw_r = (J v) . grad l_r / n with v = dM/dtheta'. One backward gives v, a forward-mode
  product through the virtual step gives J v, and one forward-mode pass of the per-row
  losses along J v gives every (J v) . grad l_r at once. No double backward.
* ``finite_difference``: the same directional derivatives from two no-grad forwards at
  theta +- h (J v) (an approximation: 0.6 % relative error in norm, in float32, on the demo
  conv net; see FD_STEP).
* ``one_sided``: one no-grad forward at theta + h (J v), against the losses the training
  forward already computed at theta: half the cost of the central difference, and the
  cheapest meta step there is (a first-order error in h; benchmarks/fd_accuracy.py
  measures it against forward mode). Full precision only, since the training forward's
  losses are the base point.
* ``double_backward`` (the reference): ``autograd.grad(L, theta, create_graph=True)``,
  the virtual step(s), M, then ``autograd.grad(M, w)`` through the gradient graph. Exact for
  any number of unrolled steps; single-process, full precision.
* ``higher``: the look-ahead through the `higher` library (SGD only), to cross-check.

The second passes (forward mode, finite differences) replay torch's random state so that
Dropout sees the same masks as in the training forward, and check that they reproduce the
training losses; a forward that draws randomness from elsewhere is refused.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad as fwAD
from torch.func import functional_call

from betaweighter.meta.lookahead import LookaheadModel
from betaweighter.meta.replay import RandomState
from betaweighter.meta.virtual_step import State, VirtualOptimizer

__all__ = ["Batch", "directional", "double_backward", "meta_direction", "per_row",
           "through_higher", "virtual_tangent", "weighted_mean"]

Params = dict[str, Tensor]

#: The finite-difference step is FD_STEP * eps^(1/3) * max(|theta|, 1) along a unit tangent.
#: Measured in float32 (benchmarks/fd_accuracy.py): on the demo conv net after 100 training
#: steps, ReLU and max-pool kinks favour small steps (1e-3: 0.3 % error in norm; 0.1: 2.4 %),
#: while a small smooth net favours large ones (1e-3: 1.5 %; 0.1: 0.01 %), where rounding
#: dominates. 3e-3 keeps both under 1 %: 0.6 % on the demo net (95 % of instances within 3 %).
FD_STEP = 3e-3


def weighted_mean(w_rows: Tensor, losses: Tensor, normalise: bool) -> Tensor:
    """The weighted training loss: a plain mean of w * l (the paper), or normalised by the
    sum of the weights when `normalise`."""
    total = (w_rows * losses).sum()
    if normalise:
        return total / w_rows.sum().clamp_min(torch.finfo(losses.dtype).tiny)
    return total / losses.numel()


@dataclass
class Batch:
    """What one meta step knows about the current batch."""

    module: nn.Module  # the model, unwrapped from DDP: functional calls go through it
    x: Any
    loss_fn: Callable[[Any], Tensor]
    losses: Tensor  # per-row losses at theta (with their graph while it is alive)
    copies: int  # rows per instance
    normalise: bool
    rows_total: int  # rows the real gradient averages over (all ranks under DDP)
    random_state: RandomState | None = None
    autocast: Callable[[], Any] = field(default=contextlib.nullcontext)
    low_precision: bool = False  # bf16/fp16 autocast: looser reproducibility check


def meta_direction(module: nn.Module, stepped: Params, names: list[str],
                   objective: Callable[[LookaheadModel], Tensor]) -> tuple[Params, Tensor]:
    """v = dM/dtheta' for the parameters `names`, and M, at the look-ahead point."""
    look = {n: (t.detach().requires_grad_() if n in names else t.detach())
            for n, t in stepped.items()}
    meta = objective(LookaheadModel(module, look))
    _check_scalar(meta)
    leaves = [look[n] for n in names]
    grads = torch.autograd.grad(meta, leaves, allow_unused=True)
    v = {n: torch.zeros_like(t) if g is None else g for n, g, t in zip(names, grads, leaves)}
    return v, meta.detach()


def virtual_tangent(vopt: VirtualOptimizer, theta: Params, grads: Params, state: State,
                    v: Params) -> Params:
    """J v, with J = d theta'/d g the (diagonal) Jacobian of the virtual step at the actual
    gradient, by one forward-mode product through the step's elementwise arithmetic."""
    linear = vopt.linear_tangent(state, {n: v[n] for n in v if n in grads})
    if linear is not None:  # SGD: J is a scalar per parameter
        return {n: linear.get(n, torch.zeros_like(t)) for n, t in v.items()}
    names = list(v)
    # Dual tensors rather than torch.func.jvp: the same forward-mode product, without
    # functorch's per-op decompositions (which made this a third of a running-direction
    # step's time on the CPU).
    with fwAD.dual_level(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
        dual = {n: fwAD.make_dual(grads[n], v[n].to(grads[n].dtype)) for n in names}
        out, _ = vopt.step(theta, dual, state)
        jv = {}
        for n in names:
            tangent = fwAD.unpack_dual(out[n]).tangent
            jv[n] = torch.zeros_like(v[n]) if tangent is None else tangent.clone()
    return jv


def directional(batch: Batch, theta: Params, tangent: Params, *, finite_difference: bool,
                check: bool = True, one_sided: bool = False) -> Tensor:
    """d/de l_r(theta + e * tangent) at e = 0 for every row r, by forward-mode AD (dual
    tensors), a central difference, or (`one_sided`, with `finite_difference`) a forward
    difference from the training losses. The tangent is scaled to unit norm for the pass
    and the result scaled back (the map is linear), so a small learning rate cannot
    underflow in low precision. With `check`, the pass's losses at theta must reproduce
    the training losses (for the one-sided difference: lie within rounding of them)."""
    norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in tangent.values()))
    if norm == 0.0 or not math.isfinite(norm):
        return torch.zeros_like(batch.losses.detach()) if norm == 0.0 else \
            torch.full_like(batch.losses.detach(), math.nan)
    unit = {n: t / norm for n, t in tangent.items()}
    fixed = {n: t for n, t in theta.items() if n not in unit}

    def row_losses(p: Params) -> Tensor:
        replay = batch.random_state.replay() if batch.random_state else contextlib.nullcontext()
        buffers = {n: b.clone() for n, b in batch.module.named_buffers()}
        with replay:
            out = functional_call(batch.module, ({**fixed, **p}, buffers), (batch.x,))
            return batch.loss_fn(out)

    if finite_difference and one_sided:
        base = _at_least_float32(batch.losses.detach())
        value, d = _one_sided_difference(row_losses, theta, unit, base)
        tol = 2e-2
    elif finite_difference:  # in full precision, against a training forward maybe in bf16
        value, d = _central_difference(row_losses, theta, unit)
        tol = 2e-2 if batch.low_precision else 1e-3
    else:
        with batch.autocast():
            value, d = _forward_mode(row_losses, theta, unit)
        tol = 2e-2 if batch.low_precision else 1e-4
    if check:
        _check_reproduced(value, batch.losses.detach(), tol)
    return _at_least_float32(d) * norm


def per_row(batch: Batch, d: Tensor, w_rows: Tensor) -> Tensor:
    """dM/dw_r from the directional derivatives d_r = (J v) . grad l_r."""
    if batch.normalise:
        total = w_rows.sum()
        return (d - (w_rows * d).sum() / total) / total
    return d / batch.rows_total


def per_instance(g_rows: Tensor, copies: int) -> Tensor:
    """Sum the rows of each instance (its copies, e.g. four rotations)."""
    return g_rows.view(-1, copies).sum(1)


def double_backward(batch: Batch, vopt: VirtualOptimizer, w: Tensor,
                    objective: Callable[[LookaheadModel], Tensor],
                    inner_steps: int = 1) -> tuple[Tensor, Tensor]:
    """Reference meta-gradient dM/dw (per instance) and M, through a differentiable copy of
    the gradient (the graph of `batch.losses` must still be alive)."""
    params: dict[str, Tensor] = dict(batch.module.named_parameters())
    names = list(vopt.tensors)
    w_rows = w.repeat_interleave(batch.copies).to(batch.losses.dtype)
    loss = weighted_mean(w_rows, batch.losses, batch.normalise)
    first = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True,
                                allow_unused=True, retain_graph=True)
    theta, state = vopt.step(params, dict(zip(names, first)), vopt.initial_state())
    for _ in range(inner_steps - 1):
        buffers = {n: b.clone() for n, b in batch.module.named_buffers()}
        replay = batch.random_state.replay() if batch.random_state else contextlib.nullcontext()
        with replay:
            out = functional_call(batch.module, (theta, buffers), (batch.x,))
        loss = weighted_mean(w_rows, batch.loss_fn(out), batch.normalise)
        grads = torch.autograd.grad(loss, [theta[n] for n in names], create_graph=True,
                                    allow_unused=True)
        theta, state = vopt.step(theta, dict(zip(names, grads)), state)
    meta = objective(LookaheadModel(batch.module, theta))
    _check_scalar(meta)
    (g_w,) = torch.autograd.grad(meta, w, allow_unused=True)
    return (torch.zeros_like(w) if g_w is None else g_w), meta.detach()


def through_higher(batch: Batch, optimizer: torch.optim.Optimizer, w: Tensor,
                   objective: Callable[[LookaheadModel], Tensor],
                   inner_steps: int = 1) -> tuple[Tensor, Tensor]:
    """The look-ahead through `higher.innerloop_ctx` (SGD). Returns (dM/dw, M)."""
    import higher

    names = [n for n, _ in batch.module.named_parameters()]
    w_rows = w.repeat_interleave(batch.copies)
    with higher.innerloop_ctx(batch.module, optimizer, copy_initial_weights=False,
                              track_higher_grads=True) as (fmodel, diffopt):
        for _ in range(inner_steps):
            replay = batch.random_state.replay() if batch.random_state \
                else contextlib.nullcontext()
            with replay:
                out = fmodel(batch.x)
            diffopt.step(weighted_mean(w_rows, batch.loss_fn(out), batch.normalise))
        theta = dict(zip(names, fmodel.parameters()))
        meta = objective(LookaheadModel(batch.module, theta))
        _check_scalar(meta)
        (g_w,) = torch.autograd.grad(meta, w, allow_unused=True)
    return (torch.zeros_like(w) if g_w is None else g_w), meta.detach()


# -- the passes ------------------------------------------------------------------------------
def _forward_mode(fn: Callable[[Params], Tensor], theta: Params,
                  tangent: Params) -> tuple[Tensor, Tensor]:
    """(fn(theta), d/de fn(theta + e * tangent)) by dual tensors (on the CPU about 25 %
    faster than the same pass through `torch.func.jvp`)."""
    with fwAD.dual_level(), warnings.catch_warnings():
        # torch loads its forward-AD decompositions through torch.jit.script the first
        # time and warns that jit is deprecated: torch's concern, not the user's.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
        dual = {n: fwAD.make_dual(theta[n], t.to(theta[n].dtype)) for n, t in tangent.items()}
        primal, tangent_out = fwAD.unpack_dual(fn(dual))
    tangent_out = torch.zeros_like(primal) if tangent_out is None else tangent_out
    return _at_least_float32(primal.detach()), _at_least_float32(tangent_out)


@torch.no_grad()
def _central_difference(fn: Callable[[Params], Tensor], theta: Params,
                        tangent: Params) -> tuple[Tensor, Tensor]:
    """((f(+) + f(-)) / 2, (f(theta + h t) - f(theta - h t)) / 2h) with a unit tangent, in
    full precision (autocast off: a step sized for float32 is lost in bfloat16's rounding).

    h = FD_STEP eps^(1/3) max(|theta|, 1): the cube root of the dtype's epsilon balances
    truncation and rounding error for a smooth function; the constant is measured."""
    dtype = next(iter(tangent.values())).dtype
    p_norm = math.sqrt(sum(float(theta[n].double().pow(2).sum()) for n in tangent))
    h = FD_STEP * torch.finfo(dtype).eps ** (1 / 3) * max(p_norm, 1.0)
    device_type = next(iter(theta.values())).device.type
    with torch.autocast(device_type, enabled=False):
        plus = fn({n: theta[n] + h * t for n, t in tangent.items()}).double()
        minus = fn({n: theta[n] - h * t for n, t in tangent.items()}).double()
    dtype = torch.promote_types(dtype, torch.float32)
    return ((plus + minus) / 2).to(dtype), ((plus - minus) / (2 * h)).to(dtype)


@torch.no_grad()
def _one_sided_difference(fn: Callable[[Params], Tensor], theta: Params, tangent: Params,
                          base: Tensor) -> tuple[Tensor, Tensor]:
    """(f(theta + h t), (f(theta + h t) - base) / h) with a unit tangent and `base` =
    f(theta) from the training forward: one forward instead of two, with the step of the
    central difference (`FD_STEP`), where ReLU kinks and rounding dominate the error."""
    dtype = next(iter(tangent.values())).dtype
    p_norm = math.sqrt(sum(float(theta[n].double().pow(2).sum()) for n in tangent))
    h = FD_STEP * torch.finfo(dtype).eps ** (1 / 3) * max(p_norm, 1.0)
    plus = fn({n: theta[n] + h * t for n, t in tangent.items()}).double()
    dtype = torch.promote_types(dtype, torch.float32)
    return plus.to(dtype), ((plus - base.double()) / h).to(dtype)


def _at_least_float32(t: Tensor) -> Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _check_reproduced(value: Tensor, reference: Tensor, tol: float) -> None:
    reference = _at_least_float32(reference)
    value = value.to(reference.dtype)
    gap = float((value - reference).abs().max()) if value.numel() else 0.0
    scale = 1.0 + float(reference.abs().max()) if reference.numel() else 1.0
    if not gap <= tol * scale:
        raise RuntimeError(
            "the model's forward is not reproducible: recomputing the per-sample losses at the "
            f"same parameters gave values {gap:.3g} away from the training forward's. "
            "betaweighter replays torch's random generators, so Dropout and other layers "
            "that draw from torch work; randomness from elsewhere (NumPy, Python's random, "
            "state that changes on every call) does not. Make the forward deterministic, or "
            "use MetaWeighter(meta_gradient='double_backward').")


def _check_scalar(meta: Any) -> None:
    if not isinstance(meta, Tensor) or meta.dim() != 0:
        shape = tuple(meta.shape) if isinstance(meta, Tensor) else type(meta).__name__
        raise ValueError(f"the meta objective must return a scalar tensor to minimise, got "
                         f"{shape}")
    if not meta.requires_grad:
        raise ValueError("the meta objective's value does not depend on the look-ahead "
                         "model's parameters: it must be computed by calling the model it "
                         "receives (e.g. model(x) or model.features(x))")
