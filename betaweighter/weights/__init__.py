"""Per-instance weighting methods, all behind the `InstanceWeights` interface."""

from betaweighter.weights.base import InstanceWeights
from betaweighter.weights.beta import BetaWeights
from betaweighter.weights.heuristics import LossHeuristicWeights
from betaweighter.weights.l2rw import L2RW
from betaweighter.weights.nearest import NearestNeighbourWeights
from betaweighter.weights.network import WeightNet
from betaweighter.weights.optimizer import InstanceOptimizer
from betaweighter.weights.point import PointWeights
from betaweighter.weights.random_control import RandomWeights
from betaweighter.weights.uniform import UniformWeights

__all__ = [
    "BetaWeights",
    "InstanceOptimizer",
    "InstanceWeights",
    "L2RW",
    "LossHeuristicWeights",
    "NearestNeighbourWeights",
    "PointWeights",
    "RandomWeights",
    "UniformWeights",
    "WeightNet",
]
