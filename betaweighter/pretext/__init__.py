"""Self-supervised pretext tasks, expressed as per-sample losses."""

from betaweighter.pretext.base import Pretext, PretextBatch
from betaweighter.pretext.boxes import PSEUDO_BOX_METHODS, PseudoBoxes, filter_boxes
from betaweighter.pretext.rotation import RotationPretext, rotate4, rotation_loss
from betaweighter.pretext.rpn import RPNPretext, check_boxes

__all__ = ["PSEUDO_BOX_METHODS", "Pretext", "PretextBatch", "PseudoBoxes", "RPNPretext",
           "RotationPretext", "check_boxes", "filter_boxes", "rotate4", "rotation_loss"]
