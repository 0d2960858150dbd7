"""MetaWeighter: the object a user puts into the training loop they already have.

``meta.backward(x, per_sample_loss, indices)`` replaces ``loss.backward()``:

1. forward the batch through the real model and take the per-sample losses;
2. sample the batch's instance weights and form the weighted loss;
3. (every `every`-th call) look one virtual optimiser step ahead, score the look-ahead
   model with the meta objective on labelled target data, and move the weighting
   method's parameters along the meta-gradient;
4. leave in the model's ``.grad`` the gradient of the same weighted loss, for the user's
   own ``optimizer.step()``: the single-pass "don't wait" update of BDW, with no second
   forward (Ericsson et al., arXiv:2006.12360).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from betaweighter.meta import engine
from betaweighter.meta.objectives import MetaObjective
from betaweighter.meta.virtual_step import VirtualOptimizer
from betaweighter.weights.base import InstanceWeights
from betaweighter.weights.optimizer import InstanceOptimizer


class MetaWeighter:
    """Learns instance weights by bilevel optimisation around a user's training loop.

    Args:
        model: any `nn.Module`.
        weights: the weighting method (`BetaWeights`, `PointWeights`, ...).
        optimizer: the model's optimiser (SGD, Adam or AdamW); the look-ahead reproduces
            its step with its current learning rate and state.
        objective: `PrototypicalLoss`, `ClassificationLoss` or any callable that takes the
            look-ahead model and returns a scalar to minimise.
        target: labelled target dataset for the objective (yields (x, label)).
        weight_lr, weight_optimizer, weight_momentum: how the weighting parameters move
            ("sgd" with momentum, or "adam"); only the batch's rows are touched unless
            `dense_weight_updates` asks for the reference code's dense behaviour.
        engine: "func" (torch.func) or "higher".
        every: run the meta update on every k-th call only; other calls just do the
            weighted backward.
        normalise: divide the weighted loss by the sum of the weights instead of the
            number of samples.
        inner_steps: number of unrolled virtual steps.
        meta_gradient: "auto" (forward mode where it is exact: SGD, one inner step, func
            engine; otherwise double backward), "forward", "finite_difference" (two
            forwards instead of the forward-mode pass: cheaper, ~1e-4 relative error in
            float32) or "double_backward".
        update_buffers: the real forward updates BatchNorm running statistics once per
            call, as the user's own forward would. False restores them afterwards. The
            look-ahead and the meta objective never touch them either way.
        max_weight_grad_norm: optional clipping of the weighting parameters' gradient.
    """

    def __init__(
        self,
        model: nn.Module,
        weights: InstanceWeights,
        optimizer: torch.optim.Optimizer,
        objective: Callable[[Any], Tensor],
        target: Any = None,
        weight_lr: float = 1.0,
        weight_optimizer: str = "sgd",
        weight_momentum: float = 0.9,
        engine: str = "func",
        every: int = 1,
        normalise: bool = False,
        inner_steps: int = 1,
        meta_gradient: str = "auto",
        dense_weight_updates: bool = False,
        update_buffers: bool = True,
        max_weight_grad_norm: float | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(weights, InstanceWeights):
            raise TypeError(
                "weights must be a betaweighter weighting method (BetaWeights, PointWeights, "
                f"UniformWeights, ...), got {type(weights).__name__}"
            )
        if engine not in _ENGINES:
            raise ValueError(f"engine must be one of {_ENGINES}, got {engine!r}")
        if meta_gradient not in _META_GRADIENTS:
            raise ValueError(
                f"meta_gradient must be one of {_META_GRADIENTS}, got {meta_gradient!r}"
            )
        if int(every) < 1 or int(inner_steps) < 1:
            raise ValueError(f"every and inner_steps must be >= 1, got {every} and {inner_steps}")
        if weights.two_pass and int(every) != 1:
            raise ValueError(
                f"{type(weights).__name__} computes each batch's weights from that batch's "
                "meta-gradient, so it needs every=1"
            )
        if not callable(objective):
            raise TypeError("objective must be callable: objective(lookahead_model) -> scalar")
        if target is not None:
            if not hasattr(objective, "bind"):
                raise TypeError(
                    "target= was given but the objective is a plain callable that cannot take "
                    "it; close over your target data in the callable instead"
                )
            objective.bind(target)
        elif (weights.learnable and isinstance(objective, MetaObjective)
              and objective.dataset is None):
            raise ValueError(
                f"{type(objective).__name__} needs labelled target data: pass "
                "target=your_labelled_dataset"
            )
        self.model = model
        self.weights = weights
        self.optimizer = optimizer
        self.objective = objective
        self.engine = engine
        self.every = int(every)
        self.normalise = bool(normalise)
        self.inner_steps = int(inner_steps)
        self.meta_gradient = meta_gradient
        self.update_buffers = bool(update_buffers)
        VirtualOptimizer(optimizer, dict(model.named_parameters()))  # fail early on a bad one
        self.weight_optimizer = InstanceOptimizer(
            weights, weight_lr, weight_optimizer, momentum=weight_momentum,
            dense=dense_weight_updates, max_grad_norm=max_weight_grad_norm,
        ) if weights.learnable else None
        self.calls = 0
        self.meta_steps = 0
        self.last_loss = math.nan
        self.last_meta_loss = math.nan
        self.last_mean_weight = math.nan

    # ------------------------------------------------------------------------------------
    def backward(self, x: Any, per_sample_loss: Callable[[Any], Tensor], indices: Any) -> Tensor:
        """Replace ``loss.backward()``. `x` holds ``copies`` consecutive rows per indexed
        instance (e.g. its 4 rotations); ``per_sample_loss(model(x))`` must return one loss
        per row. Returns the weighted loss, detached."""
        idx = self.weights._rows(torch.as_tensor(indices))
        n_inst = idx.numel()
        if n_inst == 0:
            raise ValueError("indices is empty: nothing to train on")
        n_rows = _batch_size(x)
        if n_rows % n_inst:
            raise ValueError(
                f"x has {n_rows} rows but indices has {n_inst} entries: x must hold the same "
                "number of consecutive copies of each indexed instance (e.g. 4 rotations, "
                "see bw.rotate4), so its length must be a multiple of len(indices)"
            )
        saved = None if self.update_buffers else {
            n: b.clone() for n, b in self.model.named_buffers()}
        out = self.model(x)
        losses = _check_losses(out, per_sample_loss(out), n_rows)
        copies = n_rows // n_inst
        w = self.weights.sample(idx, losses=losses.detach().view(n_inst, copies).mean(1))
        w = w.to(device=losses.device, dtype=losses.dtype)

        meta_now = self.weights.learnable and self.calls % self.every == 0
        self.calls += 1
        trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        w_real = w.detach()
        if meta_now:
            w_real, grads = self._meta_step(x, per_sample_loss, losses, w, idx, copies, trainable)
        else:
            grads = None
        if grads is None:
            loss = engine.weighted_mean(w_real.repeat_interleave(copies), losses, self.normalise)
            grads = dict(zip(trainable, torch.autograd.grad(
                loss, list(trainable.values()), allow_unused=True)))
        _accumulate(trainable, grads)
        if saved is not None:
            with torch.no_grad():
                for n, b in self.model.named_buffers():
                    b.copy_(saved[n])
        self.last_mean_weight = float(w_real.mean())
        w_rows = w_real.repeat_interleave(copies)
        loss = engine.weighted_mean(w_rows, losses.detach(), self.normalise)
        self.last_loss = float(loss)
        return loss

    def _meta_step(self, x, loss_fn, losses, w, idx, copies, trainable):
        """Update the weighting method; return (weights for the real step, model grads or
        None when they still have to be computed)."""
        vopt = VirtualOptimizer(self.optimizer, dict(self.model.named_parameters()))
        two_pass = self.weights.two_pass
        step = engine.Step(self.model, vopt, x, loss_fn, losses, w, copies, self.normalise,
                           self.objective, self.inner_steps, keep_graph=two_pass)
        method = self._method(vopt)
        grads = None
        if self.engine == "higher":
            g_w, meta = engine.through_higher(step, self.optimizer)
        elif method in ("forward", "finite_difference"):
            if not w.detach().any():  # e.g. L2RW's perturbation at 0: the gradient is zero
                grads = {n: torch.zeros_like(p) for n, p in trainable.items()}
            else:
                loss = engine.weighted_mean(step.w_rows.detach(), losses, self.normalise)
                all_g = torch.autograd.grad(loss, list(trainable.values()), allow_unused=True,
                                            retain_graph=two_pass)
                grads = dict(zip(trainable, all_g))
            g_w, meta = engine.forward_mode(
                step, {n: g for n, g in grads.items() if n in vopt.tensors and g is not None},
                finite_difference=method == "finite_difference")
        else:
            g_w, meta, grads = engine.double_backward(step)
        reg = self.weights.regulariser(idx)
        if w.requires_grad:
            torch.autograd.backward(w, grad_tensors=g_w.detach())
        if reg.requires_grad:
            reg.backward()
        w_real = self.weights.reweight(w.detach(), g_w.detach())
        self.weight_optimizer.step(idx)
        self.meta_steps += 1
        self.last_meta_loss = float(meta) + float(reg.detach())
        if w_real is None:
            return w.detach(), grads
        return w_real.detach().to(device=w.device, dtype=w.dtype), None

    def _method(self, vopt: VirtualOptimizer) -> str:
        exact_forward = vopt.kind == "sgd" and self.inner_steps == 1
        if self.meta_gradient in ("forward", "finite_difference") and not exact_forward:
            raise ValueError(
                f"meta_gradient={self.meta_gradient!r} needs an SGD optimiser and inner_steps=1 "
                "(the case where the meta-gradient is a directional derivative of the "
                "per-sample losses); use 'double_backward' or 'auto'"
            )
        if self.meta_gradient == "auto":
            return "forward" if exact_forward else "double_backward"
        return self.meta_gradient

    # ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters, the weight optimiser and the objective's sampler (not the weights or
        the model, which the caller saves)."""
        return {
            "calls": self.calls,
            "meta_steps": self.meta_steps,
            "weight_optimizer": None if self.weight_optimizer is None
            else self.weight_optimizer.state_dict(),
            "objective": self.objective.state_dict() if hasattr(self.objective, "state_dict")
            else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state["calls"])
        self.meta_steps = int(state.get("meta_steps", 0))
        if self.weight_optimizer is not None and state.get("weight_optimizer") is not None:
            self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        if state.get("objective") is not None and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(state["objective"])


_ENGINES = engine.ENGINES
_META_GRADIENTS = engine.META_GRADIENTS


def _batch_size(x: Any) -> int:
    if isinstance(x, Tensor):
        if x.dim() == 0:
            raise ValueError("x must be a batch with a leading batch dimension, got a scalar")
        return x.shape[0]
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], Tensor):
        return x[0].shape[0]
    raise TypeError(f"x must be a tensor (or a tuple of tensors), got {type(x).__name__}")


def _check_losses(out: Any, losses: Any, n_rows: int) -> Tensor:
    if isinstance(out, Tensor) and (out.dim() == 0 or out.shape[0] != n_rows):
        shape = tuple(out.shape)
        raise ValueError(
            f"the model returned an output of shape {shape} for a batch of {n_rows} inputs: "
            "its first dimension must be the batch (one output per input row)"
        )
    if not isinstance(losses, Tensor):
        raise TypeError(f"per_sample_loss must return a tensor, got {type(losses).__name__}")
    if losses.dim() == 0:
        raise ValueError(
            "per_sample_loss returned a scalar: it must return one loss per sample, e.g. "
            "F.cross_entropy(out, y, reduction='none')"
        )
    if losses.shape != (n_rows,):
        raise ValueError(
            f"per_sample_loss returned shape {tuple(losses.shape)}; expected ({n_rows},), one "
            "loss per input row (use reduction='none' and flatten any extra dimensions)"
        )
    return losses


def _accumulate(params: dict[str, Tensor], grads: dict[str, Tensor | None]) -> None:
    """Add `grads` into ``.grad`` the way ``loss.backward()`` would (accumulating)."""
    for name, p in params.items():
        g = grads.get(name)
        if g is None:
            continue
        g = g.detach()
        p.grad = g.clone() if p.grad is None else p.grad + g
