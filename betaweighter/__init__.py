"""betaweighter: meta-learned instance weights for self-supervised pre-training.

The method is BetaDataWeighter (Ericsson, Gouk and Hospedales, "Don't Wait, Just Weight",
arXiv:2006.12360): every unlabelled instance gets a Beta distribution over its weight,
learnt through a differentiable one-step look-ahead judged on a labelled target objective;
instances whose weight is confidently small are pruned.
"""

__version__ = "0.2.0"

from betaweighter import data, evaluate, models, pretext, runtime, weights  # noqa: E402
from betaweighter.meta.detection_objective import DetectionLoss  # noqa: E402
from betaweighter.meta.objectives import ClassificationLoss, PrototypicalLoss  # noqa: E402
from betaweighter.meta.weighter import MetaWeighter  # noqa: E402
from betaweighter.pretext.boxes import PseudoBoxes  # noqa: E402
from betaweighter.pretext.rotation import RotationPretext, rotate4  # noqa: E402
from betaweighter.pretext.rpn import RPNPretext  # noqa: E402
from betaweighter.pruning import PruningScheduler  # noqa: E402
from betaweighter.weights.base import InstanceWeights, LearnedWeights, WeightRule  # noqa: E402
from betaweighter.weights.beta import BetaWeights  # noqa: E402
from betaweighter.weights.cluster import ClusterWeights  # noqa: E402
from betaweighter.weights.heuristics import LossHeuristicWeights  # noqa: E402
from betaweighter.weights.l2rw import L2RW  # noqa: E402
from betaweighter.weights.nearest import NearestNeighbourWeights  # noqa: E402
from betaweighter.weights.network import WeightNet  # noqa: E402
from betaweighter.weights.optimizer import WeightOptimizer  # noqa: E402
from betaweighter.weights.point import PointWeights  # noqa: E402
from betaweighter.weights.random_control import RandomWeights  # noqa: E402
from betaweighter.weights.uniform import UniformWeights  # noqa: E402

__all__ = [
    "L2RW",
    "BetaWeights",
    "ClusterWeights",
    "ClassificationLoss",
    "DetectionLoss",
    "InstanceWeights",
    "LearnedWeights",
    "LossHeuristicWeights",
    "MetaWeighter",
    "NearestNeighbourWeights",
    "PointWeights",
    "PrototypicalLoss",
    "PruningScheduler",
    "PseudoBoxes",
    "RPNPretext",
    "RandomWeights",
    "RotationPretext",
    "UniformWeights",
    "WeightNet",
    "WeightOptimizer",
    "WeightRule",
    "__version__",
    "data",
    "evaluate",
    "models",
    "pretext",
    "rotate4",
    "runtime",
    "weights",
]
