"""betaweighter: meta-learned instance weights for self-supervised pre-training.

Every unlabelled instance gets a weight learnt through a differentiable one-step
look-ahead judged on a labelled target objective (BetaDataWeighter: Ericsson, Gouk and
Hospedales, "Don't Wait, Just Weight", arXiv:2006.12360); by default one weight is shared
per cluster of the encoder's features (`ClusterWeights`), and low-weight instances are
pruned.

The names below load on first use (PEP 562), so ``import betaweighter`` and the command
line's ``--version`` and ``--help`` do not import torch.
"""

__version__ = "0.2.0"

import importlib  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

#: public name -> the module that defines it
_NAMES = {
    "DetectionLoss": "betaweighter.meta.detection_objective",
    "ClassificationLoss": "betaweighter.meta.objectives",
    "PrototypicalLoss": "betaweighter.meta.objectives",
    "MetaWeighter": "betaweighter.meta.weighter",
    "PseudoBoxes": "betaweighter.pretext.boxes",
    "RotationPretext": "betaweighter.pretext.rotation",
    "rotate4": "betaweighter.pretext.rotation",
    "RPNPretext": "betaweighter.pretext.rpn",
    "PruningScheduler": "betaweighter.pruning",
    "InstanceWeights": "betaweighter.weights.base",
    "LearnedWeights": "betaweighter.weights.base",
    "WeightRule": "betaweighter.weights.base",
    "register_weighting": "betaweighter.weights.base",
    "BetaWeights": "betaweighter.weights.beta",
    "ClusterWeights": "betaweighter.weights.cluster",
    "LossHeuristicWeights": "betaweighter.weights.heuristics",
    "L2RW": "betaweighter.weights.l2rw",
    "NearestNeighbourWeights": "betaweighter.weights.nearest",
    "WeightNet": "betaweighter.weights.network",
    "WeightOptimizer": "betaweighter.weights.optimizer",
    "PointWeights": "betaweighter.weights.point",
    "RandomWeights": "betaweighter.weights.random_control",
    "UniformWeights": "betaweighter.weights.uniform",
}
_SUBMODULES = ("data", "evaluate", "models", "pretext", "runtime", "weights")

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from betaweighter import data, evaluate, models, pretext, runtime, weights  # noqa: F401
    from betaweighter.meta.detection_objective import DetectionLoss  # noqa: F401
    from betaweighter.meta.objectives import ClassificationLoss, PrototypicalLoss  # noqa: F401
    from betaweighter.meta.weighter import MetaWeighter  # noqa: F401
    from betaweighter.pretext.boxes import PseudoBoxes  # noqa: F401
    from betaweighter.pretext.rotation import RotationPretext, rotate4  # noqa: F401
    from betaweighter.pretext.rpn import RPNPretext  # noqa: F401
    from betaweighter.pruning import PruningScheduler  # noqa: F401
    from betaweighter.weights import (  # noqa: F401
        L2RW,
        BetaWeights,
        ClusterWeights,
        InstanceWeights,
        LearnedWeights,
        LossHeuristicWeights,
        NearestNeighbourWeights,
        PointWeights,
        RandomWeights,
        UniformWeights,
        WeightNet,
        WeightOptimizer,
        WeightRule,
        register_weighting,
    )


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"betaweighter.{name}")
    else:
        raise AttributeError(f"module 'betaweighter' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
    "register_weighting",
    "rotate4",
    "runtime",
    "weights",
]
