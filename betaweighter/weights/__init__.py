"""Per-instance weighting methods, all behind the `InstanceWeights` interface."""

from betaweighter.weights.base import InstanceWeights
from betaweighter.weights.beta import BetaWeights
from betaweighter.weights.optimizer import InstanceOptimizer
from betaweighter.weights.point import PointWeights
from betaweighter.weights.uniform import UniformWeights

__all__ = ["BetaWeights", "InstanceOptimizer", "InstanceWeights", "PointWeights", "UniformWeights"]
