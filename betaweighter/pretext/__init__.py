"""Self-supervised pretext tasks, expressed as per-sample losses."""

from betaweighter.pretext.rotation import rotate4, rotation_loss

__all__ = ["rotate4", "rotation_loss"]
