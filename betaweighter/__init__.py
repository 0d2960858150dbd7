"""betaweighter: meta-learned instance weights for self-supervised pre-training.

The method is BetaDataWeighter (Ericsson, Gouk and Hospedales, "Don't Wait, Just Weight",
arXiv:2006.12360): every unlabelled instance gets a Beta distribution over its weight,
learnt through a differentiable one-step look-ahead judged on a labelled target objective.
"""

from betaweighter import data
from betaweighter.meta.objectives import ClassificationLoss, PrototypicalLoss
from betaweighter.meta.weighter import MetaWeighter
from betaweighter.pretext.rotation import rotate4
from betaweighter.pruning import PruningScheduler
from betaweighter.weights.beta import BetaWeights
from betaweighter.weights.heuristics import LossHeuristicWeights
from betaweighter.weights.l2rw import L2RW
from betaweighter.weights.nearest import NearestNeighbourWeights
from betaweighter.weights.network import WeightNet
from betaweighter.weights.point import PointWeights
from betaweighter.weights.random_control import RandomWeights
from betaweighter.weights.uniform import UniformWeights

__version__ = "0.1.0"

__all__ = [
    "BetaWeights",
    "ClassificationLoss",
    "L2RW",
    "LossHeuristicWeights",
    "MetaWeighter",
    "NearestNeighbourWeights",
    "PointWeights",
    "PrototypicalLoss",
    "PruningScheduler",
    "RandomWeights",
    "UniformWeights",
    "WeightNet",
    "data",
    "rotate4",
]
