"""What a checkpoint holds of a run's components (model, optimiser, schedule, scaler,
weights, MetaWeighter, pruner), and restoring it: the Trainer adds its own counters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from betaweighter.errors import CheckpointError
from betaweighter.experiment.factory import Components
from betaweighter.experiment.resume import rescale_learning_rate

__all__ = ["components_state", "load_components"]


def components_state(c: Components, data_config: dict[str, Any]) -> dict[str, Any]:
    """Tensors and plain values only (the checkpoint loads with ``weights_only=True``)."""
    extra = {k: v for k, v in c.pretext.state_dict().items() if not k.startswith("backbone.")}
    return {
        "model": c.backbone.state_dict(), "model_config": c.model_config,
        "data_config": data_config, "pretext": extra,
        "optimizer": c.optimizer.state_dict(), "scheduler": c.scheduler.state_dict(),
        "scaler": None if c.scaler is None else c.scaler.state_dict(),
        "num_instances": c.weights.num_instances,
        "weights": c.weights.state_dict(), "meta": c.meta.state_dict(),
        "pruner": None if c.pruner is None else c.pruner.state_dict(),
        **c.pretext.checkpoint_entries(),
    }


def load_components(c: Components, s: dict[str, Any], path: Path, lr: float) -> None:
    """Restore `c` from checkpoint state `s` (read from `path`); `lr` is the run's
    configured learning rate, which a resume may have changed."""
    try:
        backbone = {f"backbone.{k}": v for k, v in s["model"].items()}
        c.pretext.load_state_dict({**backbone, **s.get("pretext", {})})
        c.optimizer.load_state_dict(s["optimizer"])
        c.scheduler.load_state_dict(s["scheduler"])
        if c.scaler is not None and s.get("scaler"):
            c.scaler.load_state_dict(s["scaler"])
        c.weights.load_state_dict(s["weights"])
        c.meta.load_state_dict(s["meta"])
        if c.pruner is not None:  # a run extended by more epochs has a longer schedule
            c.pruner.load_state_dict(s["pruner"], ("total_epochs", "anneal_epochs"))
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not match this run's model or "
                              f"weights ({str(e).splitlines()[0]}); start a new run") from None
    rescale_learning_rate(c.optimizer, c.scheduler, lr)
