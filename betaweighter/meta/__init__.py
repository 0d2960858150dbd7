"""The bilevel engine: look-ahead steps, meta objectives and MetaWeighter."""

from betaweighter.meta.lookahead import LookaheadModel
from betaweighter.meta.objectives import ClassificationLoss, MetaObjective, PrototypicalLoss
from betaweighter.meta.virtual_step import VirtualOptimizer
from betaweighter.meta.weighter import MetaWeighter

__all__ = [
    "ClassificationLoss",
    "LookaheadModel",
    "MetaObjective",
    "MetaWeighter",
    "PrototypicalLoss",
    "VirtualOptimizer",
]
