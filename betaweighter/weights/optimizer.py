"""Optimiser for per-instance weight parameters that touches only the batch's rows.

The reference code ran dense SGD with momentum over all N weight parameters, so every
instance seen once kept moving on stale momentum long after it left the batch
(bdw_spec.md, section 6, item 10). Here a step updates only the rows of the instances in
the batch: SGD with momentum keeps one buffer row per instance, Adam keeps per-row moments
and a per-row step count (a "lazy" Adam). ``dense=True`` switches to the reference
behaviour, a plain `torch.optim` optimiser over the whole vectors, for reproducing the
paper's numbers. Parameters that are not per-instance rows (e.g. a weighting network) are
always optimised densely.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from betaweighter.weights.base import InstanceWeights

KINDS = ("sgd", "adam")


class InstanceOptimizer:
    """Steps the parameters of `weights` from their ``.grad``.

    Args:
        weights: the weighting method.
        lr: learning rate.
        kind: ``"sgd"`` (with `momentum`) or ``"adam"`` (with `betas`, `eps`).
        dense: reference-compatible mode: momentum/moments over all rows at every step.
        max_grad_norm: optional clipping of the gradient norm before the step.
    """

    def __init__(
        self,
        weights: InstanceWeights,
        lr: float,
        kind: str = "sgd",
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        dense: bool = False,
        max_grad_norm: float | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"weight optimizer must be one of {KINDS}, got {kind!r}")
        if not lr > 0:
            raise ValueError(f"weight learning rate must be > 0, got {lr}")
        self.weights = weights
        self.lr = float(lr)
        self.kind = kind
        self.momentum = float(momentum)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.dense = bool(dense)
        self.max_grad_norm = max_grad_norm
        self.nonfinite_steps = 0
        named = dict(weights.named_parameters())
        rows = [] if dense else [n for n in weights.row_parameters if n in named]
        self._row_params = {n: named[n] for n in rows}
        self._state: dict[str, dict[str, Tensor]] = {}
        others = [p for n, p in named.items() if n not in self._row_params]
        self._dense_opt: torch.optim.Optimizer | None = None
        if others:
            if kind == "sgd":
                self._dense_opt = torch.optim.SGD(others, lr=lr, momentum=self.momentum)
            else:
                self._dense_opt = torch.optim.Adam(others, lr=lr, betas=self.betas, eps=eps)

    def parameters(self) -> list[Tensor]:
        return list(self.weights.parameters())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    @torch.no_grad()
    def step(self, indices: Tensor) -> None:
        """Apply one update from the current ``.grad`` (rows `indices` only, unless dense),
        then clear the gradients and project the weights back into range."""
        params = [p for p in self.parameters() if p.grad is not None]
        for p in params:
            if not torch.isfinite(p.grad).all():
                self.nonfinite_steps += 1
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
        if self.max_grad_norm is not None and params:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        for g in (self._dense_opt.param_groups if self._dense_opt else []):
            g["lr"] = self.lr
        if self._row_params:
            rows = torch.unique(torch.as_tensor(indices, device=self.weights.device).long())
            for name, p in self._row_params.items():
                if p.grad is not None:
                    self._row_step(name, p, rows)
        if self._dense_opt is not None:
            self._dense_opt.step()
        self.zero_grad()
        self.weights.project_()

    def _row_step(self, name: str, p: Tensor, rows: Tensor) -> None:
        g = p.grad[rows]
        state = self._state.setdefault(name, {})
        if self.kind == "sgd":
            if self.momentum != 0.0:
                buf = state.setdefault("momentum_buffer", torch.zeros_like(p))
                buf[rows] = self.momentum * buf[rows] + g
                g = buf[rows]
            p[rows] -= self.lr * g
            return
        b1, b2 = self.betas
        t = state.setdefault("step", torch.zeros_like(p))
        m = state.setdefault("exp_avg", torch.zeros_like(p))
        v = state.setdefault("exp_avg_sq", torch.zeros_like(p))
        t[rows] += 1
        m[rows] = b1 * m[rows] + (1 - b1) * g
        v[rows] = b2 * v[rows] + (1 - b2) * g * g
        m_hat = m[rows] / (1 - b1 ** t[rows])
        v_hat = v[rows] / (1 - b2 ** t[rows])
        p[rows] -= self.lr * m_hat / (v_hat.sqrt() + self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "kind": self.kind,
            "dense": self.dense,
            "nonfinite_steps": self.nonfinite_steps,
            "rows": {n: {k: v.clone() for k, v in s.items()} for n, s in self._state.items()},
            "dense_opt": None if self._dense_opt is None else self._dense_opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind or state.get("dense") != self.dense:
            raise ValueError(
                f"weight-optimiser state is for kind={state.get('kind')!r}, "
                f"dense={state.get('dense')!r}, but this optimiser is kind={self.kind!r}, "
                f"dense={self.dense!r}: build it with the same settings before loading"
            )
        self.lr = float(state["lr"])
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        device = self.weights.device
        self._state = {
            n: {k: v.to(device) for k, v in s.items()} for n, s in state["rows"].items()
        }
        if self._dense_opt is not None and state.get("dense_opt") is not None:
            self._dense_opt.load_state_dict(state["dense_opt"])
