"""Self-supervised pretext tasks, expressed as per-sample losses."""

from betaweighter.pretext.base import Pretext, PretextBatch
from betaweighter.pretext.rotation import RotationPretext, rotate4, rotation_loss

__all__ = ["Pretext", "PretextBatch", "RotationPretext", "rotate4", "rotation_loss"]
