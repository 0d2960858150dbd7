"""Differentiable copies of the user's optimiser step, for the one-step look-ahead.

`VirtualOptimizer` reads the real optimiser's hyper-parameters and state (current learning
rate, momentum buffers, Adam moments, RMSprop averages) and applies the same update rule as
out-of-place tensor operations, so that theta' = step(theta, g(w)) stays differentiable in
the instance weights w. One virtual step reproduces the real step of `torch.optim.SGD`,
`Adam`, `AdamW` (with AMSGrad), `RMSprop` (centred or not, with momentum) and `Adagrad`
exactly; the real optimiser and its state are never modified.

Every one of these steps is elementwise in the gradient: the new value of a parameter entry
depends only on the same entry of the gradient. So d theta' / d g is diagonal, which is
what lets the meta-gradient be computed in forward mode for all of them (see
`betaweighter.meta.gradients`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["SUPPORTED", "VirtualOptimizer"]

SUPPORTED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop,
             torch.optim.Adagrad)
State = dict[str, dict[str, Any]]


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt whose derivative at 0 is 0 instead of inf (an unused parameter has a zero
    second moment; inf * 0 would turn the whole meta-gradient into NaN)."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), 0.0)


def _value(v: Any) -> float:
    return float(v.item()) if isinstance(v, Tensor) else float(v)


def _sgd(p: Tensor, g: Tensor, s: dict, group: dict) -> tuple[Tensor, dict]:
    lr, mom, wd = _value(group["lr"]), group["momentum"], group["weight_decay"]
    d = -g if group.get("maximize", False) else g
    if wd != 0:
        d = d + wd * p
    s = dict(s)
    if mom != 0:
        buf = s.get("momentum_buffer")
        buf = d if buf is None else mom * buf + (1 - group["dampening"]) * d
        s["momentum_buffer"] = buf
        d = d + mom * buf if group["nesterov"] else buf
    return p - lr * d, s


def _adam(p: Tensor, g: Tensor, s: dict, group: dict) -> tuple[Tensor, dict]:
    lr, wd, eps = _value(group["lr"]), group["weight_decay"], group["eps"]
    b1, b2 = (_value(b) for b in group["betas"])
    decoupled = group.get("decoupled_weight_decay", False)
    g = -g if group.get("maximize", False) else g
    step = _value(s.get("step", 0.0)) + 1
    if wd != 0:
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
    m = torch.lerp(s.get("exp_avg", torch.zeros_like(p)), g, 1 - b1)
    v = s.get("exp_avg_sq", torch.zeros_like(p)) * b2 + (1 - b2) * g * g
    s = {**s, "step": step, "exp_avg": m, "exp_avg_sq": v}
    if group.get("amsgrad", False):
        v = torch.maximum(s.get("max_exp_avg_sq", torch.zeros_like(p)), v)
        s["max_exp_avg_sq"] = v
    denom = _safe_sqrt(v) / (1 - b2**step) ** 0.5 + eps
    return p - (lr / (1 - b1**step)) * m / denom, s


def _rmsprop(p: Tensor, g: Tensor, s: dict, group: dict) -> tuple[Tensor, dict]:
    lr, alpha, eps = _value(group["lr"]), group["alpha"], group["eps"]
    wd, mom = group["weight_decay"], group["momentum"]
    g = -g if group.get("maximize", False) else g
    if wd != 0:
        g = g + wd * p
    square = s.get("square_avg", torch.zeros_like(p)) * alpha + (1 - alpha) * g * g
    s = {**s, "step": _value(s.get("step", 0.0)) + 1, "square_avg": square}
    if group["centered"]:
        grad_avg = torch.lerp(s.get("grad_avg", torch.zeros_like(p)), g, 1 - alpha)
        s["grad_avg"] = grad_avg
        avg = _safe_sqrt(square - grad_avg * grad_avg) + eps
    else:
        avg = _safe_sqrt(square) + eps
    if mom > 0:
        buf = s.get("momentum_buffer", torch.zeros_like(p)) * mom + g / avg
        s["momentum_buffer"] = buf
        return p - lr * buf, s
    return p - lr * g / avg, s


def _adagrad(p: Tensor, g: Tensor, s: dict, group: dict) -> tuple[Tensor, dict]:
    lr, decay, wd, eps = (_value(group["lr"]), group["lr_decay"], group["weight_decay"],
                          group["eps"])
    g = -g if group.get("maximize", False) else g
    step = _value(s.get("step", 0.0)) + 1
    if wd != 0:
        g = g + wd * p
    total = s.get("sum", torch.full_like(p, group["initial_accumulator_value"])) + g * g
    clr = lr / (1 + (step - 1) * decay)
    return p - clr * g / (_safe_sqrt(total) + eps), {**s, "step": step, "sum": total}


_RULES: dict[type, Callable[..., tuple[Tensor, dict]]] = {
    torch.optim.SGD: _sgd, torch.optim.Adam: _adam, torch.optim.AdamW: _adam,
    torch.optim.RMSprop: _rmsprop, torch.optim.Adagrad: _adagrad,
}


class VirtualOptimizer:
    """Functional version of `optimizer` for the parameters named in `named_params`.

    Raises TypeError for an optimiser it cannot reproduce.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, named_params: dict[str, Tensor]) -> None:
        rule = next((r for cls, r in _RULES.items() if type(optimizer) is cls), None)
        if rule is None:
            rule = next((r for cls, r in _RULES.items() if isinstance(optimizer, cls)), None)
        if rule is None:
            names = ", ".join(f"torch.optim.{c.__name__}" for c in SUPPORTED)
            raise TypeError(
                f"the look-ahead step can reproduce {names}; got "
                f"{type(optimizer).__module__}.{type(optimizer).__name__}. Use one of those "
                "for the model, or pass a callable objective and your own look-ahead.")
        self.optimizer = optimizer
        self.rule = rule
        self.kind = type(optimizer).__name__.lower()
        by_id = {id(p): n for n, p in named_params.items()}
        self._group_of: dict[str, int] = {}
        self.tensors: dict[str, Tensor] = {}
        for i, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                name = by_id.get(id(p))
                if name is None:
                    raise ValueError(
                        "the optimizer holds a parameter that is not a parameter of the model "
                        f"(shape {tuple(p.shape)}); build it from model.parameters()")
                if p.requires_grad:
                    self._group_of[name] = i
                    self.tensors[name] = p

    @property
    def groups(self) -> dict[str, dict[str, Any]]:
        """Each parameter's current param group. Read at every step, not kept: the
        optimiser's ``load_state_dict`` and schedulers replace or change the groups."""
        groups = self.optimizer.param_groups
        return {name: groups[i] for name, i in self._group_of.items()}

    def initial_state(self) -> State:
        """The real optimiser's per-parameter state, detached (read-only views)."""
        out: State = {}
        for name, p in self.tensors.items():
            s = self.optimizer.state.get(p, {})
            out[name] = {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in s.items()}
        return out

    def linear_tangent(self, state: State, v: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """J v without forward-mode AD where the step is linear in the gradient (SGD:
        theta' = theta - lr * c * g + terms free of g, with c = 1 + momentum * (1 -
        dampening) under Nesterov once a buffer exists, and so on), so J = -lr * c * I per
        parameter; None for the other optimisers (their step is not linear in g)."""
        if self.kind != "sgd":
            return None
        groups = self.groups
        out = {}
        for name, t in v.items():
            group = groups.get(name)
            if group is None:
                continue
            mom = group["momentum"]
            c = 1.0
            if mom != 0:
                has_buffer = state.get(name, {}).get("momentum_buffer") is not None
                c_buf = (1 - group["dampening"]) if has_buffer else 1.0
                c = 1.0 + mom * c_buf if group["nesterov"] else c_buf
            if group.get("maximize", False):
                c = -c
            out[name] = t * (-_value(group["lr"]) * c)
        return out

    def step(self, params: dict[str, Tensor], grads: dict[str, Tensor | None],
             state: State) -> tuple[dict[str, Tensor], State]:
        """One differentiable step. Parameters not in the optimiser, or without a gradient,
        are carried over unchanged (as the real optimiser would leave them)."""
        new_params = dict(params)
        new_state: State = dict(state)
        for name, group in self.groups.items():
            g = grads.get(name)
            if g is None:
                continue
            new_params[name], new_state[name] = self.rule(params[name], g,
                                                          state.get(name, {}), group)
        return new_params, new_state
