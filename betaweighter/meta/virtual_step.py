"""Differentiable copies of the user's optimiser step, for the one-step look-ahead.

`VirtualOptimizer` reads the real optimiser's hyper-parameters and state (current
learning rate, momentum buffers, Adam moments) and applies the same update rule as
out-of-place tensor operations, so that theta' = step(theta, g(w)) stays differentiable in
the instance weights w. One virtual step reproduces `torch.optim.SGD`/`Adam`/`AdamW`'s
real step exactly; the real optimiser and its state are never modified.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

SUPPORTED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
State = dict[str, dict[str, Any]]


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt whose derivative at 0 is 0 instead of inf (an unused parameter has a zero
    second moment; inf * 0 would turn the whole meta-gradient into NaN)."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), 0.0)


def _value(v: Any) -> float:
    return float(v.item()) if isinstance(v, Tensor) else float(v)


class VirtualOptimizer:
    """Functional version of `optimizer` for the parameters named in `named_params`.

    Raises TypeError for an optimiser other than SGD, Adam or AdamW.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, named_params: dict[str, Tensor]) -> None:
        if not isinstance(optimizer, SUPPORTED):
            names = ", ".join(f"torch.optim.{c.__name__}" for c in SUPPORTED)
            raise TypeError(
                f"the look-ahead step can reproduce {names}; got "
                f"{type(optimizer).__module__}.{type(optimizer).__name__}. Use one of "
                "those for the model, or pass a callable objective and your own look-ahead."
            )
        self.optimizer = optimizer
        self.kind = "sgd" if isinstance(optimizer, torch.optim.SGD) else "adam"
        by_id = {id(p): n for n, p in named_params.items()}
        self.groups: dict[str, dict[str, Any]] = {}
        self.tensors: dict[str, Tensor] = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                name = by_id.get(id(p))
                if name is None:
                    raise ValueError(
                        "the optimizer holds a parameter that is not a parameter of the model "
                        f"(shape {tuple(p.shape)}); build it from model.parameters()"
                    )
                if p.requires_grad:
                    self.groups[name] = group
                    self.tensors[name] = p

    def initial_state(self) -> State:
        """The real optimiser's per-parameter state, detached (read-only views)."""
        out: State = {}
        for name, p in self.tensors.items():
            s = self.optimizer.state.get(p, {})
            out[name] = {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in s.items()}
        return out

    def step(
        self, params: dict[str, Tensor], grads: dict[str, Tensor | None], state: State
    ) -> tuple[dict[str, Tensor], State]:
        """One differentiable step. Parameters not in the optimiser, or without a gradient,
        are carried over unchanged (as the real optimiser would leave them)."""
        new_params = dict(params)
        new_state: State = dict(state)
        for name, group in self.groups.items():
            g = grads.get(name)
            if g is None:
                continue
            fn = self._sgd if self.kind == "sgd" else self._adam
            new_params[name], new_state[name] = fn(params[name], g, state.get(name, {}), group)
        return new_params, new_state

    def grad_scale(self, state: State) -> dict[str, float]:
        """For SGD: the factor c with theta' = (terms free of g) - c * g, per parameter.

        Momentum and weight decay do not depend on the instance weights, so the
        meta-gradient needs only c (DESIGN.md, performance notes).
        """
        if self.kind != "sgd":
            raise ValueError("grad_scale is defined for SGD only")
        out = {}
        for name, group in self.groups.items():
            lr, mom = _value(group["lr"]), group["momentum"]
            damp, nesterov = group["dampening"], group["nesterov"]
            has_buf = state.get(name, {}).get("momentum_buffer") is not None
            if mom == 0:
                c = lr
            elif not has_buf:
                c = lr * (1 + mom) if nesterov else lr
            else:
                c = lr * (1 + mom * (1 - damp)) if nesterov else lr * (1 - damp)
            out[name] = -c if group.get("maximize", False) else c
        return out

    @staticmethod
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

    @staticmethod
    def _adam(p: Tensor, g: Tensor, s: dict, group: dict) -> tuple[Tensor, dict]:
        lr, wd, eps = _value(group["lr"]), group["weight_decay"], group["eps"]
        b1, b2 = group["betas"]
        b1, b2 = _value(b1), _value(b2)
        decoupled = group.get("decoupled_weight_decay", False)
        g = -g if group.get("maximize", False) else g
        step = _value(s.get("step", 0.0)) + 1
        if wd != 0:
            if decoupled:
                p = p * (1 - lr * wd)
            else:
                g = g + wd * p
        m = s.get("exp_avg", torch.zeros_like(p))
        v = s.get("exp_avg_sq", torch.zeros_like(p))
        m = torch.lerp(m, g, 1 - b1)
        v = v * b2 + (1 - b2) * g * g
        s = {**s, "step": step, "exp_avg": m, "exp_avg_sq": v}
        if group.get("amsgrad", False):
            vmax = torch.maximum(s.get("max_exp_avg_sq", torch.zeros_like(p)), v)
            s["max_exp_avg_sq"] = vmax
            v = vmax
        denom = _safe_sqrt(v) / (1 - b2**step) ** 0.5 + eps
        return p - (lr / (1 - b1**step)) * m / denom, s
