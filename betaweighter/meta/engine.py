"""The bilevel step: the meta-gradient of the target objective w.r.t. the batch weights.

With a weighted training loss L(w) = sum_j w_j l_j / n, a virtual optimiser step gives
theta'(w), and the meta objective M(theta'(w)) is differentiated w.r.t. w. Three ways:

* ``double_backward`` (the reference): ``autograd.grad(L, theta, create_graph=True)``, the
  virtual step, M, then ``autograd.grad(M, w)`` through the gradient graph. Exact for any
  supported optimiser and any number of unrolled steps.
* ``forward`` (the fast path, SGD-type steps with one inner step): theta' = const - c * g(w)
  with g linear in w, so dM/dw_j = -(1/n) <c v, grad l_j> where v = dM/dtheta'. One
  backward gives v and one forward-mode pass (`torch.func.jvp`) of the per-sample loss
  vector along c v gives every <c v, grad l_j> at once: no double backward.
* ``higher``: the same look-ahead through the `higher` library's differentiable
  optimiser, to cross-check the others and for users of higher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from betaweighter.meta.lookahead import LookaheadModel
from betaweighter.meta.virtual_step import VirtualOptimizer

ENGINES = ("func", "higher")
META_GRADIENTS = ("auto", "forward", "double_backward")


def weighted_mean(w_rows: Tensor, losses: Tensor, normalise: bool) -> Tensor:
    """The weighted training loss: a plain mean of w * l (the paper), or normalised by the
    sum of the weights when `normalise`."""
    total = (w_rows * losses).sum()
    if normalise:
        return total / w_rows.sum().clamp_min(torch.finfo(losses.dtype).tiny)
    return total / losses.numel()


@dataclass
class Step:
    """Everything one meta step needs about the current batch."""

    model: nn.Module
    vopt: VirtualOptimizer
    x: Any
    loss_fn: Callable[[Any], Tensor]
    losses: Tensor  # per-row losses at theta, with their graph
    w: Tensor  # (B,) instance weights, differentiable w.r.t. the weighting method
    copies: int  # rows per instance
    normalise: bool
    objective: Callable[[LookaheadModel], Tensor]
    inner_steps: int = 1
    keep_graph: bool = False  # the caller will backward `losses` again

    @property
    def w_rows(self) -> Tensor:
        return self.w.repeat_interleave(self.copies)

    def per_instance(self, g_rows: Tensor) -> Tensor:
        return g_rows.view(-1, self.copies).sum(1)


def _zeros_if_none(grads: tuple, like: list[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like)]


def double_backward(step: Step) -> tuple[Tensor, Tensor, dict[str, Tensor | None]]:
    """Reference meta-gradient. Returns (dM/dw, M, the weighted loss's gradient at theta
    for every trainable parameter, detached)."""
    params = dict(step.model.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    names = list(step.vopt.tensors)
    loss = weighted_mean(step.w_rows, step.losses, step.normalise)
    first = torch.autograd.grad(loss, [params[n] for n in trainable], create_graph=True,
                                allow_unused=True)
    first = dict(zip(trainable, first))
    theta, state = step.vopt.step(params, first, step.vopt.initial_state())
    for _ in range(step.inner_steps - 1):
        out = functional_call(step.model, (theta, _cloned_buffers(step.model)), (step.x,))
        loss = weighted_mean(step.w_rows, step.loss_fn(out), step.normalise)
        grads = torch.autograd.grad(loss, [theta[n] for n in names], create_graph=True,
                                    allow_unused=True)
        theta, state = step.vopt.step(theta, dict(zip(names, grads)), state)
    meta = step.objective(LookaheadModel(step.model, theta))
    (g_w,) = torch.autograd.grad(meta, step.w, allow_unused=True, retain_graph=step.keep_graph)
    g_w = torch.zeros_like(step.w) if g_w is None else g_w
    return g_w, meta.detach(), {n: (g if g is None else g.detach()) for n, g in first.items()}


def forward_mode(step: Step, grads: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Fast exact meta-gradient for one SGD-type virtual step. `grads` is the gradient of
    the weighted loss at theta (detached weights), which the caller also hands to the
    real optimiser. Returns (dM/dw, M)."""
    names = list(step.vopt.tensors)
    theta = {n: p.detach() for n, p in step.model.named_parameters()}
    state = step.vopt.initial_state()
    stepped, _ = step.vopt.step(theta, grads, state)
    look = {n: (t.detach().requires_grad_() if n in grads else t) for n, t in stepped.items()}
    meta = step.objective(LookaheadModel(step.model, look))
    leaves = [look[n] for n in names if n in grads]
    v = _zeros_if_none(torch.autograd.grad(meta, leaves, allow_unused=True), leaves)
    scale = step.vopt.grad_scale(state)
    tangent = {n: scale[n] * vi for n, vi in zip([n for n in names if n in grads], v)}
    fixed = {n: t for n, t in theta.items() if n not in tangent}

    def row_losses(p: dict[str, Tensor]) -> Tensor:
        out = functional_call(step.model, ({**fixed, **p}, _cloned_buffers(step.model)), (step.x,))
        return step.loss_fn(out)

    primals = {n: theta[n] for n in tangent}
    _, directional = jvp(row_losses, (primals,), (tangent,))
    w_rows = step.w_rows.detach()
    if step.normalise:
        total = w_rows.sum()
        g_rows = -(directional - (w_rows * directional).sum() / total) / total
    else:
        g_rows = -directional / step.losses.numel()
    return step.per_instance(g_rows), meta.detach()


def through_higher(step: Step, optimizer: torch.optim.Optimizer) -> tuple[Tensor, Tensor]:
    """The look-ahead through `higher.innerloop_ctx`. Returns (dM/dw, M)."""
    import higher

    if isinstance(optimizer, torch.optim.AdamW) or any(
        g.get("decoupled_weight_decay", False) for g in optimizer.param_groups
    ):
        raise TypeError("engine='higher' supports SGD and Adam (higher has no AdamW); "
                        "use engine='func' for AdamW")
    # higher works on a copy of the module whose buffers are its own, so the real
    # BatchNorm statistics are not touched by these forwards.
    names = [n for n, _ in step.model.named_parameters()]
    with higher.innerloop_ctx(step.model, optimizer, copy_initial_weights=False,
                              track_higher_grads=True) as (fmodel, diffopt):
        for _ in range(step.inner_steps):
            loss = weighted_mean(step.w_rows, step.loss_fn(fmodel(step.x)), step.normalise)
            diffopt.step(loss)
        theta = dict(zip(names, fmodel.parameters()))
        meta = step.objective(LookaheadModel(step.model, theta))
        (g_w,) = torch.autograd.grad(meta, step.w, allow_unused=True,
                                     retain_graph=step.keep_graph)
    return (torch.zeros_like(step.w) if g_w is None else g_w), meta.detach()


def _cloned_buffers(model: nn.Module) -> dict[str, Tensor]:
    return {n: b.clone() for n, b in model.named_buffers()}
