"""Per-instance weighting methods: learned distributions and per-step rules."""

from betaweighter.weights.base import (
    WEIGHTINGS,
    InstanceWeights,
    LearnedWeights,
    WeightRule,
    register_weighting,
)
from betaweighter.weights.beta import BetaWeights
from betaweighter.weights.cluster import ClusterWeights
from betaweighter.weights.heuristics import LossHeuristicWeights
from betaweighter.weights.l2rw import L2RW
from betaweighter.weights.nearest import NearestNeighbourWeights
from betaweighter.weights.network import WeightNet
from betaweighter.weights.optimizer import WeightOptimizer
from betaweighter.weights.point import PointWeights
from betaweighter.weights.random_control import RandomWeights
from betaweighter.weights.uniform import UniformWeights

__all__ = [
    "WEIGHTINGS",
    "BetaWeights",
    "ClusterWeights",
    "InstanceWeights",
    "L2RW",
    "LearnedWeights",
    "LossHeuristicWeights",
    "NearestNeighbourWeights",
    "PointWeights",
    "RandomWeights",
    "UniformWeights",
    "WeightNet",
    "WeightOptimizer",
    "WeightRule",
    "register_weighting",
]
