"""The bilevel engine: look-ahead steps, meta-gradients, meta objectives and MetaWeighter."""

from betaweighter.meta.detection_objective import DetectionLoss
from betaweighter.meta.lookahead import LookaheadModel
from betaweighter.meta.objectives import ClassificationLoss, MetaObjective, PrototypicalLoss
from betaweighter.meta.virtual_step import VirtualOptimizer
from betaweighter.meta.weighter import META_GRADIENTS, MetaWeighter

__all__ = [
    "META_GRADIENTS",
    "ClassificationLoss",
    "DetectionLoss",
    "LookaheadModel",
    "MetaObjective",
    "MetaWeighter",
    "PrototypicalLoss",
    "VirtualOptimizer",
]
