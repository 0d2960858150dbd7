"""Self-supervised pretext tasks, expressed as per-sample losses, and the augmentation
presets applied to pool images before them."""

from betaweighter.pretext.augment import AUGMENTATIONS, PRESETS, Augment
from betaweighter.pretext.base import Pretext, PretextBatch
from betaweighter.pretext.rotation import RotationPretext, rotate4, rotation_loss

__all__ = ["AUGMENTATIONS", "PRESETS", "Augment", "Pretext", "PretextBatch", "RotationPretext",
           "rotate4", "rotation_loss"]
