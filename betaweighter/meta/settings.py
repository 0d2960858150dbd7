"""Which MetaWeighter settings go together: every refused combination, with the reason and
the fix, checked once when the MetaWeighter is built."""

from __future__ import annotations

from typing import Any

from betaweighter.meta import distributed as dist
from betaweighter.weights.base import WeightRule
from betaweighter.weights.optimizer import WeightOptimizer

__all__ = ["DIRECTIONAL", "check_combination"]

#: the meta-gradients that take the directional derivative along v (running direction)
DIRECTIONAL = ("forward", "finite_difference", "one_sided")


def check_combination(meta: Any, objective: Any, weight_optimizer: Any) -> None:
    """Raise (TypeError, ValueError, ImportError) for a combination `meta` cannot run."""
    method, ddp = meta.meta_gradient, dist.is_ddp(meta.model)
    if meta.needs_meta and not callable(objective):
        raise TypeError("objective must be callable: objective(lookahead_model) -> scalar "
                        f"(needed by {type(meta.weights).__name__})")
    if weight_optimizer is not None and not meta.learned:
        raise ValueError(f"{type(meta.weights).__name__} is a per-step rule with nothing "
                         "to optimise: drop weight_optimizer=")
    if weight_optimizer is not None and not isinstance(weight_optimizer, WeightOptimizer):
        raise TypeError("weight_optimizer must be a betaweighter.WeightOptimizer, got "
                        f"{type(weight_optimizer).__name__}")
    if isinstance(meta.weights, WeightRule) and meta.weights.needs_meta_gradient:
        if meta.every != 1:
            raise ValueError(f"{type(meta.weights).__name__} computes each batch's weights "
                             "from that batch's meta-gradient, so it needs every=1")
        if meta.normalise:
            raise ValueError(f"{type(meta.weights).__name__} perturbs the weights around "
                             "w = 0, where a loss normalised by the sum of the weights is "
                             "0 / 0: use normalise=False")
    if method == "higher":
        try:
            import higher  # noqa: F401
        except ImportError:
            raise ImportError("meta_gradient='higher' needs the higher package: pip "
                              "install 'betaweighter[higher]'") from None
        if meta.vopt.kind != "sgd":
            raise ValueError(
                "meta_gradient='higher' reproduces torch.optim.SGD only: higher's Adam "
                "adds eps to sqrt(v) before the bias correction, where torch adds it "
                "after (about 30x the eps at the first step), and higher has no AdamW or "
                f"RMSprop. Use 'forward' or 'double_backward' with {meta.vopt.kind}.")
    if meta.direction == "running":
        if method not in DIRECTIONAL:
            raise ValueError("direction='running' averages the meta direction v, which "
                             "only the forward-mode and finite-difference meta-gradients "
                             f"use; meta_gradient={method!r} needs direction='fresh'")
        if not meta.learned and meta.needs_meta:
            raise ValueError(f"{type(meta.weights).__name__} takes each batch's own "
                             "meta-gradient: use direction='fresh'")
    if method in ("double_backward", "higher"):
        if ddp:
            raise ValueError(f"meta_gradient={method!r} is single-process: DDP does not "
                             "reduce higher-order gradients. Use 'forward' (exact for one "
                             "step of any elementwise optimiser) or 'finite_difference'")
        if meta.precision != "fp32":
            raise ValueError(f"meta_gradient={method!r} runs in full precision only (a "
                             "double backward in fp16 can give NaN); use precision='fp32' "
                             "or meta_gradient='forward'")
    if method == "one_sided" and meta.precision != "fp32":
        raise ValueError("meta_gradient='one_sided' differences against the training "
                         "forward's losses, which a low-precision forward rounds: use "
                         "precision='fp32', or meta_gradient='forward' (exact in bf16 "
                         "and fp16)")
    if meta.precision == "fp16" and meta.scaler is None:
        raise ValueError("precision='fp16' needs a GradScaler: pass "
                         "scaler=torch.amp.GradScaler() and call scaler.step(optimizer); "
                         "scaler.update() instead of optimizer.step()")
