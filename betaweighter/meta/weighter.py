"""MetaWeighter: the object a user puts into the training loop they already have.

``meta.backward(x, per_sample_loss, indices)`` replaces ``loss.backward()``:

1. forward the batch through the model as the user wraps it (plain, DDP, autocast) and take
   the per-sample losses;
2. take the batch's instance weights: a sample of the learned distributions, or a rule's
   weights (for L2RW, from the meta-gradient at w = 0, computed first);
3. backward the weighted loss, an ordinary ``loss.backward()``: DDP reduces the gradient,
   hooks fire, a GradScaler scales it, gradients accumulate as users expect;
4. (every `every`-th call, learned weights) look one virtual optimiser step ahead with that
   gradient, score the look-ahead model with the meta objective on labelled target data,
   and move the weighting parameters along the meta-gradient.

The user's ``optimizer.step()`` then applies the gradient of the weights that were sampled
*before* the meta update: the single-pass "don't wait" update of BDW (Ericsson, Gouk and
Hospedales, arXiv:2006.12360).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from betaweighter.data.options import Range, integer
from betaweighter.meta import checks, gradients
from betaweighter.meta import distributed as dist
from betaweighter.meta.objectives import MetaObjective
from betaweighter.meta.replay import RandomState
from betaweighter.meta.running import RunningDirection
from betaweighter.meta.settings import DIRECTIONAL, check_combination
from betaweighter.meta.virtual_step import VirtualOptimizer
from betaweighter.runtime import world
from betaweighter.weights.base import InstanceWeights, LearnedWeights, WeightRule
from betaweighter.weights.optimizer import WeightOptimizer

__all__ = ["DIRECTIONS", "META_GRADIENTS", "PRECISIONS", "MetaWeighter"]

META_GRADIENTS = ("auto", "forward", "finite_difference", "one_sided", "double_backward",
                  "higher")
DIRECTIONS = ("fresh", "running")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class MetaWeighter:
    """Learns instance weights by bilevel optimisation around a user's training loop.

    Args:
        model: any `nn.Module` (or its DistributedDataParallel wrapper).
        weights: the weighting method: learned (`BetaWeights`, `PointWeights`, `WeightNet`)
            or a rule (`UniformWeights`, `L2RW`, `LossHeuristicWeights`, ...).
        optimizer: the model's optimiser (SGD, Adam, AdamW, RMSprop or Adagrad); the
            look-ahead reproduces its step with its current learning rate and state.
        objective: `PrototypicalLoss`, `ClassificationLoss` or any callable that takes the
            look-ahead model and returns a scalar to minimise. Not needed by rules that
            ignore it.
        target: labelled target dataset for the objective (yields (x, label)).
        weight_optimizer: a `WeightOptimizer` (default: the scale-free one); only for
            learned weights.
        meta_gradient: ``"auto"`` (forward mode with one inner step, else double backward),
            ``"forward"``, ``"finite_difference"``, ``"one_sided"`` (one extra no-grad
            forward against the training losses: the cheapest, full precision only),
            ``"double_backward"`` or ``"higher"``.
        every: run the labelled episode (the meta objective) on every k-th call only.
            With ``direction="fresh"`` the weights are updated on those calls only; the
            others just do the weighted backward.
        direction: ``"fresh"`` (the paper): each weight update uses the meta direction
            v = dM/dtheta' of its own episode. ``"running"``: v is a bias-corrected moving
            average of the recent episodes' directions (decay `direction_decay`), and the
            weights of *every* batch are updated with it, so each visit of an instance gets
            a meta-gradient while the episode runs only every `every` calls. One episode's v
            is mostly noise (its repeatability across episodes is near 0 on the demo set);
            the average keeps the part that repeats. Forward mode and finite differences
            only.
        inner_steps: number of unrolled virtual steps (double backward or higher only).
        normalise: divide the weighted loss by the sum of the weights instead of the
            number of rows.
        update_buffers: the real forward updates BatchNorm running statistics once per call,
            as the user's own forward would; False restores them afterwards. The look-ahead
            and the meta objective never touch them either way.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: autocast for the forwards. fp16
            needs `scaler`.
        scaler: a ``torch.amp.GradScaler`` the user owns: `backward` scales the loss with it,
            the user calls ``scaler.step(optimizer); scaler.update()``. The look-ahead uses
            an unscaled copy of the gradient, and a step whose gradient is not finite skips
            the meta update (counted in ``skipped_meta_steps``).
        shuffle_meta_gradients: the shuffled control: each batch's per-instance
            meta-gradients are permuted across its instances (seeded by the call count)
            before they move the weights. The weights then move as much as the real run's,
            but by noise alone; pruning that this control matches follows noise.

    Set ``plain = True`` (the trainer does when a budget's scoring phase ends) to stop
    weighting: `backward` is then an ordinary backward of the mean loss, with no meta step
    and no weights, at the cost of a plain step.
    """

    #: The allowed values of the numeric arguments, declared beside the signature whose
    #: defaults they go with; the config schema's ``meta.*`` keys copy both.
    ranges: ClassVar[dict[str, Range]] = {"every": integer(1), "inner_steps": integer(1),
                                          "direction_decay": Range(0, 1, hi_open=True)}

    def __init__(
        self,
        model: nn.Module,
        weights: InstanceWeights,
        optimizer: torch.optim.Optimizer,
        objective: Callable[[Any], Tensor] | None = None,
        target: Any = None,
        *,
        weight_optimizer: WeightOptimizer | None = None,
        meta_gradient: str = "auto",
        every: int = 1,
        direction: str = "fresh",
        direction_decay: float = 0.9,
        inner_steps: int = 1,
        normalise: bool = False,
        update_buffers: bool = True,
        precision: str = "fp32",
        scaler: Any = None,
        shuffle_meta_gradients: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(weights, (LearnedWeights, WeightRule)):
            raise TypeError("weights must be a betaweighter weighting method (BetaWeights, "
                            f"PointWeights, UniformWeights, ...), got {type(weights).__name__}")
        if meta_gradient not in META_GRADIENTS:
            raise ValueError(f"meta_gradient must be one of {META_GRADIENTS}, got "
                             f"{meta_gradient!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        given = {"every": every, "inner_steps": inner_steps, "direction_decay": direction_decay}
        for name, allowed in self.ranges.items():  # the one declaration of each range
            problem = allowed.problem(given[name])
            if problem is not None:
                raise ValueError(f"MetaWeighter {name}: {problem}")
        self.model = model
        self.module = dist.unwrap(model)
        self.weights = weights
        self.optimizer = optimizer
        self.learned = isinstance(weights, LearnedWeights)
        self.needs_meta = self.learned or weights.needs_meta_gradient
        self.every, self.inner_steps = int(every), int(inner_steps)
        self.direction, self.direction_decay = direction, float(direction_decay)
        self.running = RunningDirection(direction_decay)
        self.normalise, self.update_buffers = bool(normalise), bool(update_buffers)
        self.precision, self.scaler = precision, scaler
        self.shuffle_meta_gradients = bool(shuffle_meta_gradients)
        self.plain = False
        self.meta_gradient = self._method(meta_gradient)
        self.vopt = VirtualOptimizer(optimizer, dict(self.module.named_parameters()))
        check_combination(self, objective, weight_optimizer)
        if target is not None:
            if not hasattr(objective, "bind"):
                raise TypeError("target= was given but the objective is a plain callable "
                                "that cannot take it; close over your target data in the "
                                "callable instead")
            cast(Any, objective).bind(target)
        elif (self.needs_meta and isinstance(objective, MetaObjective)
              and objective.dataset is None):
            raise ValueError(f"{type(objective).__name__} needs labelled target data: pass "
                             "target=your_labelled_dataset")
        self.objective = objective
        self.weight_optimizer = None
        if self.learned:
            self.weight_optimizer = (weight_optimizer or WeightOptimizer()).bind(
                cast(LearnedWeights, weights))
        self.calls = 0
        self.meta_steps = 0  # weight updates
        self.episodes = 0  # meta objective evaluations
        self.skipped_meta_steps = 0
        self.last_loss = math.nan
        self.last_meta_loss = math.nan
        self.last_mean_weight = math.nan

    # -- validation ----------------------------------------------------------------------
    def _method(self, requested: str) -> str:
        if requested == "auto":
            return "forward" if self.inner_steps == 1 else "double_backward"
        if requested in DIRECTIONAL and self.inner_steps != 1:
            raise ValueError(f"meta_gradient={requested!r} is exact for one virtual step "
                             f"only; inner_steps={self.inner_steps} needs 'double_backward'")
        return requested

    # -- the training step -----------------------------------------------------------------
    def backward(self, x: Any, per_sample_loss: Callable[[Any], Tensor], indices: Any,
                 copies: int | str = "infer") -> Tensor:
        """Replace ``loss.backward()``. `x` holds `copies` consecutive rows per indexed
        instance (e.g. its 4 rotations; ``"infer"`` takes len(x) / len(indices));
        ``per_sample_loss(model(x))`` must return one loss per row. Returns the weighted
        loss, detached.

        An index may appear more than once in a batch (an image drawn twice, a sampler's
        padding): each occurrence is weighted and trained on as its own rows, and the
        meta-gradients of the occurrences are summed into the instance's parameters, as
        the chain rule says for one parameter used twice; it counts as one visit."""
        idx = cast(Tensor, self.weights._rows(torch.as_tensor(indices)))
        n_rows = checks.batch_size(x)
        copies = checks.copies_per_instance(copies, n_rows, idx.numel())
        if self.plain:
            return self._plain_backward(x, per_sample_loss, n_rows)
        episode_now = self.needs_meta and self.calls % self.every == 0
        meta_now = episode_now or (self.learned and self.direction == "running")
        step = self.calls
        self.calls += 1
        random_state = RandomState(checks.device_of(x)) if meta_now else None
        saved = None if self.update_buffers else {
            n: b.clone() for n, b in self.module.named_buffers()}
        with self._autocast():
            out = self.model(x)
        checks.check_output(out, n_rows)
        losses = checks.check_losses(per_sample_loss(out), n_rows)
        dtype = torch.promote_types(losses.dtype, torch.float32)  # bf16/fp16 losses: float32
        inst_losses = losses.detach().to(dtype).view(-1, copies).mean(1)
        batch = gradients.Batch(self.module, x, per_sample_loss, losses, copies,
                                self.normalise, n_rows * self._replicas(), random_state,
                                self._autocast, low_precision=self.precision != "fp32")
        w = None
        if self.learned:
            with torch.set_grad_enabled(meta_now):  # no graph to the weights between updates
                w = cast(LearnedWeights, self.weights).sample(idx, inst_losses)
            self._observe(idx, inst_losses)
            w_real = w.detach()
        else:
            w_real = self._rule_weights(batch, idx, inst_losses, step, meta_now)
        w_rows = w_real.to(device=losses.device, dtype=dtype).repeat_interleave(copies)
        loss = gradients.weighted_mean(w_rows, losses.to(dtype), self.normalise)
        if meta_now and self.learned:
            before = {n: (None if p.grad is None else p.grad.clone())
                      for n, p in self.module.named_parameters() if n in self.vopt.tensors}
        keep = meta_now and self.learned and self.meta_gradient == "double_backward"
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward(retain_graph=keep)
        if meta_now and self.learned:
            assert w is not None  # sampled above for learned weights
            self._meta_update(batch, w, idx, before, episode_now)
        if saved is not None:
            with torch.no_grad():
                for n, b in self.module.named_buffers():
                    b.copy_(saved[n])
        self.last_mean_weight = float(w_real.float().mean())
        self.last_loss = float(loss.detach())
        return loss.detach()

    def _plain_backward(self, x: Any, per_sample_loss: Callable[[Any], Tensor],
                        n_rows: int) -> Tensor:
        """An ordinary backward of the mean per-row loss: no weights, no meta step."""
        self.calls += 1
        with self._autocast():
            out = self.model(x)
        checks.check_output(out, n_rows)
        losses = checks.check_losses(per_sample_loss(out), n_rows)
        loss = losses.to(torch.promote_types(losses.dtype, torch.float32)).mean()
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self.last_mean_weight = 1.0
        self.last_loss = float(loss.detach())
        return loss.detach()

    def _rule_weights(self, batch: gradients.Batch, idx: Tensor, inst_losses: Tensor,
                      step: int, meta_now: bool) -> Tensor:
        """A rule's weights, computed on the global batch under DDP (identical state)."""
        meta_grad = None
        if meta_now:  # L2RW: dM/dw at w = 0, before the real step
            zeros = {n: torch.zeros_like(p) for n, p in self.vopt.tensors.items()}
            w0 = torch.zeros(idx.numel(), device=batch.losses.device,
                             dtype=torch.promote_types(batch.losses.dtype, torch.float32))
            meta_grad, meta = self._meta_gradient(batch, w0, zeros)
            self.meta_steps += 1
            self.episodes += 1
            self.last_meta_loss = float(meta)
        gathered, own = dist.all_gather_rows(
            idx, inst_losses, *(() if meta_grad is None else (meta_grad,)))
        w_all = cast(WeightRule, self.weights).weights(gathered[0], gathered[1], step=step,
                                     meta_grad=gathered[2] if meta_grad is not None else None)
        return w_all[own]

    def _observe(self, idx: Tensor, inst_losses: Tensor) -> None:
        gathered, _ = dist.all_gather_rows(idx, inst_losses)
        cast(LearnedWeights, self.weights).observe(*gathered)

    def _meta_update(self, batch: gradients.Batch, w: Tensor, idx: Tensor,
                     before: dict[str, Tensor | None], episode: bool = True) -> None:
        scale = float(self.scaler.get_scale()) if self.scaler is not None else 1.0
        grads = {}
        for n, p in self.module.named_parameters():
            if n not in self.vopt.tensors or p.grad is None:
                continue
            earlier = before[n]
            g = p.grad.detach() if earlier is None else p.grad.detach() - earlier
            grads[n] = g.float() / scale if scale != 1.0 else g
        finite = torch.tensor(all(bool(torch.isfinite(g).all()) for g in grads.values()),
                              dtype=torch.float32, device=batch.losses.device)
        dist.sum_([finite])  # every rank skips together
        if int(finite) != self._replicas():
            self.skipped_meta_steps += 1
            return
        g_w, meta = self._meta_gradient(batch, w, grads, episode)
        if self.shuffle_meta_gradients:  # the control: the same signals, on other instances
            gen = torch.Generator().manual_seed(self.calls)
            g_w = g_w[torch.randperm(g_w.numel(), generator=gen).to(g_w.device)]
        replicas = self._replicas()
        reg = cast(LearnedWeights, self.weights).regulariser(idx) / replicas
        torch.autograd.backward([w, reg] if reg.requires_grad else [w],
                                [g_w.detach().to(w.dtype)] + ([torch.ones_like(reg)]
                                                              if reg.requires_grad else []))
        optimizer = self.weight_optimizer
        assert optimizer is not None  # made for learned weights
        step_rows = dist.sum_weight_grads(self.weights, idx, optimizer.dense)
        optimizer.step(step_rows)
        self.meta_steps += 1
        if episode:
            self.episodes += 1
            self.last_meta_loss = float(meta) + float(reg.detach()) * replicas

    def _meta_gradient(self, batch: gradients.Batch, w: Tensor, grads: dict[str, Tensor],
                       episode: bool = True) -> tuple[Tensor, Tensor]:
        """dM/dw per instance of this rank's batch, and M (averaged over ranks; NaN when no
        episode ran because a running direction was reused)."""
        method = self.meta_gradient
        objective = self.objective
        assert objective is not None  # check_combination requires one for a meta-gradient
        if method == "double_backward":
            w_graph = w if w.requires_grad else w.detach().requires_grad_()
            return gradients.double_backward(batch, self.vopt, w_graph, objective,
                                             self.inner_steps)
        if method == "higher":
            w_graph = w if w.requires_grad else w.detach().requires_grad_()
            return gradients.through_higher(batch, self.optimizer, w_graph, objective,
                                            self.inner_steps)
        theta = {n: p.detach() for n, p in self.module.named_parameters()}
        names = [n for n in self.vopt.tensors if n in grads]
        state = self.vopt.initial_state()
        meta = torch.full((), math.nan)
        if episode or self.running.empty:
            stepped, _ = self.vopt.step(theta, {n: grads[n] for n in names}, state)
            with self._autocast():
                v, meta = gradients.meta_direction(self.module, stepped, names, objective)
            meta = meta.float().clone()
            dist.average_([*v.values(), meta])
            if self.direction == "running":
                v = self.running.update(v)
        else:
            v = self.running.get(names)
        tangent = gradients.virtual_tangent(self.vopt, theta, grads, state, v)
        d = gradients.directional(batch, theta, tangent,
                                  finite_difference=method != "forward",
                                  one_sided=method == "one_sided")
        w_rows = w.detach().to(d.dtype).repeat_interleave(batch.copies)
        return gradients.per_instance(gradients.per_row(batch, d, w_rows), batch.copies), meta

    def _autocast(self) -> Any:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        device = next(self.module.parameters()).device.type
        return torch.autocast(device, dtype=dtype)

    def _replicas(self) -> int:
        return world()[0] if dist.is_ddp(self.model) else 1

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters, the weight optimiser and the objective's state (not the weights or the
        model, which the caller saves)."""
        return {
            "calls": self.calls, "meta_steps": self.meta_steps, "episodes": self.episodes,
            "skipped_meta_steps": self.skipped_meta_steps,
            "weight_optimizer": None if self.weight_optimizer is None
            else self.weight_optimizer.state_dict(),
            "objective": cast(Any, self.objective).state_dict()
            if hasattr(self.objective, "state_dict") else None,
            "running_direction": self.running.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state["calls"])
        self.meta_steps = int(state["meta_steps"])
        self.episodes = int(state.get("episodes", 0))
        self.skipped_meta_steps = int(state.get("skipped_meta_steps", 0))
        if self.weight_optimizer is not None and state.get("weight_optimizer") is not None:
            self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        if state.get("objective") is not None and hasattr(self.objective, "load_state_dict"):
            cast(Any, self.objective).load_state_dict(state["objective"])
        self.running.load_state_dict(state.get("running_direction"),
                                     dict(self.module.named_parameters()))
