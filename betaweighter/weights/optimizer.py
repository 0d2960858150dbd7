"""How learned weighting parameters move along their meta-gradient.

Scale-free by default. The raw meta-gradient's size depends on everything around it: the
model (it varies about 100x between a small conv net and ResNet-18), the model's learning
rate (the look-ahead step is proportional to it), the scale of the pretext loss and of the
meta objective, the batch size. A fixed weight learning rate cannot serve all of them.
With ``normalise=True`` every gradient g is divided by a running root mean square of the
meta-gradients over the pool before the step:

    s_t   = rho * s_{t-1} + (1 - rho) * mean(g_t ** 2)     (over the entries the step touches)
    s^_t  = s_t / (1 - rho ** t)                           (bias correction, as in Adam)
    g^_t  = g_t / sqrt(s^_t)

The second moment is one scalar for the whole pool, not one per instance (as Adam would
keep): an instance whose meta-gradient is consistently larger than the pool's typical one
still moves faster, which is the information the weights should learn. ``lr`` then reads
as "how far a parameter moves in one meta update for a gradient of typical size", whatever
the model, loss or schedule. Multiplying the meta objective by any constant leaves the
trajectory unchanged exactly; the docs page "How the weights learn" gives the other
invariances and their limits.

Only the rows of the instances in the batch are touched (an SGD momentum buffer row, or
lazy-Adam moments, per instance). The reference code ran dense SGD with momentum over all
N parameters, so instances kept moving on stale momentum long after they left the batch;
``dense=True`` (with ``normalise=False``, ``lr=1``, ``momentum=0.9``) reproduces it for
comparison with the paper's numbers. Parameters that are not per-instance rows (a
weighting network) are always stepped densely.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from betaweighter.data.options import Range
from betaweighter.weights.base import LearnedWeights

__all__ = ["DEFAULT_LR", "KINDS", "WeightOptimizer"]

KINDS = ("sgd", "adam")
DEFAULT_LR = 0.1


class WeightOptimizer:
    """Steps the parameters of a `LearnedWeights` from their ``.grad``.

    Args:
        kind: ``"sgd"`` (with `momentum`, no dampening, as torch.optim.SGD) or ``"adam"``
            (per-row moments and step counts: a lazy Adam, with `betas`, `eps`).
        lr: learning rate: with ``normalise``, the movement per meta update of a parameter
            whose gradient has the pool's typical size.
        normalise: divide by the running RMS of the meta-gradients (see the module
            docstring); False uses the raw gradient (the reference code).
        rms_decay: rho above; about 1 / (1 - rho) meta steps of memory.
        dense: reference-compatible mode: momentum/moments over all rows at every step.
        max_grad_norm: optional clipping of the gradient norm (after normalisation).

    Pass it to `MetaWeighter(weight_optimizer=...)`, which binds it to the weights.
    """

    #: The allowed values of the numeric arguments, declared once: the constructor checks
    #: them, and the config schema's ``meta.weight_*`` keys copy them (with the defaults of
    #: the signature). `betas` is checked on its own (a pair).
    ranges: ClassVar[dict[str, Range]] = {
        "lr": Range(0, lo_open=True), "momentum": Range(0, 1, hi_open=True),
        "eps": Range(0, lo_open=True), "rms_decay": Range(0, 1, hi_open=True),
        "max_grad_norm": Range(0, lo_open=True)}

    def __init__(self, kind: str = "sgd", lr: float = DEFAULT_LR, *, momentum: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 normalise: bool = True, rms_decay: float = 0.99, dense: bool = False,
                 max_grad_norm: float | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"weight optimizer kind must be one of {KINDS}, got {kind!r}")
        given = {"lr": lr, "momentum": momentum, "eps": eps, "rms_decay": rms_decay,
                 "max_grad_norm": max_grad_norm}
        bad = [k for k, v in given.items()
               if v is not None and self.ranges[k].problem(_plain(v)) is not None]
        if not (len(betas) == 2 and all(0 <= b < 1 for b in betas)):
            bad.append("betas")
        if bad:
            need = ", ".join(f"{k} in {r.describe()}" for k, r in self.ranges.items())
            raise ValueError(f"invalid weight optimizer settings {bad}: need {need} (all "
                             "finite; max_grad_norm may be None), betas a pair in [0, 1)")
        self.kind, self.lr = kind, float(lr)
        self.momentum, self.betas, self.eps = float(momentum), (float(betas[0]),
                                                                float(betas[1])), float(eps)
        self.normalise, self.rms_decay = bool(normalise), float(rms_decay)
        self.dense, self.max_grad_norm = bool(dense), max_grad_norm
        self.weights: LearnedWeights | None = None
        self.nonfinite_steps = 0
        self._rms_sum, self._rms_steps = 0.0, 0

    @classmethod
    def paper(cls) -> WeightOptimizer:
        """The reference code's update, by name: the raw meta-gradient, SGD at lr 1 with
        momentum 0.9, dense over all rows (the ``bdw-paper`` configs use the same)."""
        return cls("sgd", 1.0, momentum=0.9, normalise=False, dense=True)

    @property
    def settings(self) -> dict[str, Any]:
        """The options, as given (saved with the state)."""
        return {"kind": self.kind, "lr": self.lr, "momentum": self.momentum,
                "betas": list(self.betas), "eps": self.eps, "normalise": self.normalise,
                "rms_decay": self.rms_decay, "dense": self.dense,
                "max_grad_norm": self.max_grad_norm}

    def bind(self, weights: LearnedWeights) -> WeightOptimizer:
        """Attach to `weights` (once) and allocate the per-instance state."""
        if not isinstance(weights, LearnedWeights):
            raise TypeError(f"a WeightOptimizer steps learned weights (BetaWeights, "
                            f"PointWeights, WeightNet), not {type(weights).__name__}")
        if self.weights is not None and self.weights is not weights:
            raise ValueError("this WeightOptimizer is already bound to other weights; build "
                             "one per MetaWeighter")
        if self.weights is weights:
            return self
        self.weights = weights
        named = dict(weights.named_parameters())
        rows = [] if self.dense else [n for n in weights.row_parameters if n in named]
        self._row_params = {n: named[n] for n in rows}
        self._state: dict[str, dict[str, Tensor]] = {}
        self.visits = torch.zeros(weights.num_instances, dtype=torch.long, device=weights.device)
        others = [p for n, p in named.items() if n not in self._row_params]
        self._dense_opt: torch.optim.Optimizer | None = None
        if others:
            if self.kind == "sgd":
                self._dense_opt = torch.optim.SGD(others, lr=self.lr, momentum=self.momentum)
            else:
                self._dense_opt = torch.optim.Adam(others, lr=self.lr, betas=self.betas,
                                                   eps=self.eps)
        return self

    @property
    def scale(self) -> float:
        """The running RMS of the meta-gradients (bias-corrected); NaN before the first
        step. Logged per epoch as a diagnostic."""
        if self._rms_steps == 0:
            return math.nan
        return math.sqrt(self._rms_sum / (1.0 - self.rms_decay ** self._rms_steps))

    def parameters(self) -> list[Tensor]:
        return list(self._bound().parameters())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    @torch.no_grad()
    def step(self, indices: Tensor) -> None:
        """Apply one update from the current ``.grad`` (rows `indices` only, unless dense),
        then clear the gradients and project the weights back into their range."""
        weights = self._bound()
        rows = torch.unique(torch.as_tensor(indices, device=weights.device).long())
        params = [p for p in self.parameters() if p.grad is not None]
        for p in params:
            if not torch.isfinite(_grad(p)).all():
                self.nonfinite_steps += 1
                torch.nan_to_num_(_grad(p), nan=0.0, posinf=0.0, neginf=0.0)
        if self.normalise and params:
            self._normalise(params, rows)
        if self.max_grad_norm is not None and params:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        for name, p in self._row_params.items():
            if p.grad is not None:
                self._row_step(name, p, rows)
        if self._dense_opt is not None:
            for g in self._dense_opt.param_groups:
                g["lr"] = self.lr
            self._dense_opt.step()
        self.visits[rows] += 1
        self.zero_grad()
        weights.project_()

    def _normalise(self, params: list[Tensor], rows: Tensor) -> None:
        total, count = 0.0, 0
        row_ids = {id(p) for p in self._row_params.values()}
        for p in params:
            g = _grad(p)[rows] if id(p) in row_ids else _grad(p)
            total += float(g.double().pow(2).sum())
            count += g.numel()
        self._rms_sum = self.rms_decay * self._rms_sum + (1 - self.rms_decay) * total / count
        self._rms_steps += 1
        scale = self.scale
        if scale > 0:
            for p in params:
                _grad(p).div_(scale)

    def _row_step(self, name: str, p: Tensor, rows: Tensor) -> None:
        g = _grad(p)[rows]
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

    def _bound(self) -> LearnedWeights:
        if self.weights is None:
            raise RuntimeError("this WeightOptimizer is not bound to weights yet: pass it to "
                               "MetaWeighter(weight_optimizer=...) or call bind(weights)")
        return self.weights

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._bound()
        return {
            "settings": self.settings, "nonfinite_steps": self.nonfinite_steps,
            "rms": [self._rms_sum, self._rms_steps], "visits": self.visits.clone(),
            "rows": {n: {k: v.clone() for k, v in s.items()} for n, s in self._state.items()},
            "dense_opt": None if self._dense_opt is None else self._dense_opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights = self._bound()
        saved = dict(state.get("settings", {}))
        saved["betas"] = list(saved.get("betas", []))
        if saved != self.settings:
            differ = sorted(k for k in self.settings if saved.get(k) != self.settings[k])
            raise ValueError(f"the saved weight-optimiser state was made with other settings "
                             f"({', '.join(differ)}): build the WeightOptimizer with the same "
                             "settings before loading")
        self.nonfinite_steps = int(state["nonfinite_steps"])
        self._rms_sum, self._rms_steps = float(state["rms"][0]), int(state["rms"][1])
        self.visits = torch.as_tensor(state["visits"]).to(weights.device).clone()
        self._state = {n: {k: v.to(weights.device) for k, v in s.items()}
                       for n, s in state["rows"].items()}
        if self._dense_opt is not None and state.get("dense_opt") is not None:
            self._dense_opt.load_state_dict(state["dense_opt"])


def _plain(value: Any) -> Any:
    """A Python number from a numpy or 0-d torch scalar (what the range check reads)."""
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        return value.item()
    return value


def _grad(p: Tensor) -> Tensor:
    """`p`'s gradient, which the caller has checked is there."""
    assert p.grad is not None
    return p.grad
