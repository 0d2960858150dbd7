"""The config schema: one typed dataclass per YAML section, and `Config`, which holds them.

Each field's type, default, checked range (``span``) or registry is the key's whole
definition: `betaweighter.experiment.config` reads YAML into these classes strictly, and the
documentation's config reference is generated from them (the comment above a field is its
description).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from betaweighter.data.sources import DATA_SOURCES
from betaweighter.experiment.loggers import LOGGERS
from betaweighter.experiment.mirror import mirror, mirror_arg
from betaweighter.experiment.optimizers import OPTIMIZERS, SCHEDULES
from betaweighter.experiment.tasks import (
    PATH,
    SEED,
    DetectionTask,
    FewshotTask,
    FinetuneTask,
    InstanceSegmentationTask,
    InvarianceTask,
    LinearTask,
    SegmentationTask,
    span,
)
from betaweighter.meta.objectives import OBJECTIVES
from betaweighter.meta.weighter import DIRECTIONS, META_GRADIENTS, PRECISIONS, MetaWeighter
from betaweighter.models import MODELS
from betaweighter.pretext.augment import AUGMENTATIONS, PRESETS
from betaweighter.pretext.base import PRETEXTS
from betaweighter.pruning import (
    CONTROL_RULES,
    PRUNING_RULES,
    BudgetRule,
    CDFRule,
    MatchedRule,
    PruningSchedule,
    PruningScheduler,
    QuantileRule,
)
from betaweighter.weights.base import WEIGHTINGS
from betaweighter.weights.optimizer import KINDS as WEIGHT_OPTIMIZERS
from betaweighter.weights.optimizer import WeightOptimizer

__all__ = ["Config", "DataSection", "EvaluateSection", "ExperimentSection", "MetaSection",
           "ModelSection", "PretextSection", "PruningSection", "TrainSection",
           "WeightsSection", "task_names", "task_section"]

AUGMENT_PRESETS = tuple(PRESETS)


_range = span

# the names of the tables they come from, as the schema's choices
OPTIMIZER_NAMES, SCHEDULE_NAMES = tuple(OPTIMIZERS), tuple(SCHEDULES)
PRECISION_NAMES = tuple(PRECISIONS)

@dataclass
class ExperimentSection:
    name: str = "experiment"
    seed: int = field(default=0, metadata=SEED)
    output_root: str = "runs"  # relative to the working directory
    # Python modules imported before the config is checked: a package of your own whose
    # @register_weighting components this config names (they must be importable).
    imports: list[str] = field(default_factory=list)


@dataclass
class DataSection:
    # A registered data source (betaweighter.data.sources.DATA_SOURCES): demo (the embedded
    # set, no files); mixture (drawn shapes with four kinds of distractors, no files); stl10
    # (STL-10 binaries under `root`); decathlon (Visual Decathlon under `root`, `target` the
    # labelled domain); folders (your own ImageFolder trees, `pool_root` and `target_root`);
    # shapes (generated detection scenes, no files); or one registered by experiment.imports.
    name: str = field(default="demo", metadata={"registry": DATA_SOURCES})
    root: str | None = field(default=None, metadata=PATH)
    target: str | None = None
    pool_root: str | None = field(default=None, metadata=PATH)
    target_root: str | None = field(default=None, metadata=PATH)
    download: bool = False
    workers: int = field(default=0, metadata=_range(0))
    # Keyword arguments of the data source's builder (betaweighter.data.stl10, .decathlon,
    # .image_folders, .demo, ...), checked against its signature and declared ranges.
    options: dict = field(default_factory=dict)


@dataclass
class ModelSection:
    # A registered model (betaweighter.models.MODELS): convnet, resnet18, resnet50, vit_tiny,
    # or one registered by experiment.imports; the keys below are passed to those that
    # take them.
    name: str = field(default="convnet", metadata={"registry": MODELS})
    width: int = field(default=64, metadata=_range(1))  # convnet: channels per block
    blocks: int = field(default=4, metadata=_range(1))  # convnet: conv; vit_tiny: transformer
    # vit_tiny: the side of its square patches, and of the images it takes (null: the
    # data's); its position embeddings fix the input size.
    patch_size: int = field(default=4, metadata=_range(1))
    image_size: int | None = field(default=None, metadata=_range(1))


@dataclass
class PretextSection:
    # A registered pretext (betaweighter.pretext.PRETEXTS): rotation, rpn, simclr, moco, byol,
    # simsiam, swav, mae, or one registered by experiment.imports.
    name: str = field(default="rotation", metadata={"registry": PRETEXTS})
    # Augmentation of each pool image before the pretext task (betaweighter.pretext.augment):
    # default (nothing added), spatial (crop + flip), appearance (colour + grayscale + blur),
    # all, or a list of parts from crop, flip, colour, grayscale, blur.
    augment: (Literal[AUGMENT_PRESETS]  # type: ignore[valid-type]
              | list[Literal[AUGMENTATIONS]]) = "default"  # type: ignore[valid-type]
    # Keyword arguments of the pretext task's class (checked against its signature).
    options: dict = field(default_factory=dict)
    # A checkpoint (or run directory) whose backbone the task starts from (loaded
    # strictly: its architecture must be `model`'s), e.g. a rotation-pretrained ResNet for
    # pretext rpn; null: a randomly initialised model.
    init: str | None = field(default=None, metadata=PATH)
    # The key layout of `init`: auto (detected), or a published format such as moco or swav
    # (see `betaweighter evaluate --help`); a published file gives the encoder, not the head.
    init_format: str = "auto"


@dataclass
class WeightsSection:
    # A registered weighting method (betaweighter.weights.WEIGHTINGS): cluster, bdw, dw,
    # l2rw, nn, weightnet, heuristic, random, rotnet, or one registered by experiment.imports.
    method: str = field(default="bdw", metadata={"registry": WEIGHTINGS})
    # Keyword arguments of the method's class (checked against its signature).
    options: dict = field(default_factory=dict)


@dataclass
class MetaSection:
    # A registered meta objective (betaweighter.meta.objectives.OBJECTIVES): prototypical
    # (episodes of `way` x (`shot` + `query`) target images); detection (the RPN loss on
    # `detection_batch` labelled target images: pretext rpn on data with a detection
    # target, e.g. shapes). The rotation model's head has 4 outputs, so a classification
    # objective needs a head of its own: use bw.ClassificationLoss(head=...) from Python.
    objective: str = field(default="prototypical", metadata={"registry": OBJECTIVES})
    detection_batch: int = field(default=4, metadata=_range(1))
    way: int = field(default=10, metadata=_range(2))
    shot: int = field(default=10, metadata=_range(1))
    query: int = field(default=10, metadata=_range(1))
    # The keys from meta_gradient to shuffle_meta_gradients are MetaWeighter's arguments,
    # with its defaults and declared ranges (MetaWeighter.ranges).
    # one_sided: one extra no-grad forward against the training losses (the cheapest)
    meta_gradient: Literal[META_GRADIENTS] = mirror_arg(  # type: ignore[valid-type]
        MetaWeighter, "meta_gradient")
    # run the labelled episode (the meta objective) on every k-th batch only
    every: int = mirror_arg(MetaWeighter, "every")
    # fresh: each weight update uses its own episode's direction (the paper); running: a
    # moving average of the episodes' directions updates the weights of every batch
    direction: Literal[DIRECTIONS] = mirror_arg(  # type: ignore[valid-type]
        MetaWeighter, "direction")
    direction_decay: float = mirror_arg(MetaWeighter, "direction_decay")
    inner_steps: int = mirror_arg(MetaWeighter, "inner_steps")
    # divide the weighted loss by the sum of the weights: weights then change which data
    # teaches, not how fast the model learns, and their meta-gradients compete
    normalise: bool = mirror_arg(MetaWeighter, "normalise")
    # the shuffled control: meta-gradients permuted across each batch's instances
    shuffle_meta_gradients: bool = mirror_arg(MetaWeighter, "shuffle_meta_gradients")
    # The weight optimiser (betaweighter.WeightOptimizer: kind, lr, momentum, normalise,
    # rms_decay, dense, with its defaults and declared ranges): scale-free by default
    # (weight_normalise), so weight_lr is the movement per meta update of a typical signal.
    weight_optimizer: Literal[WEIGHT_OPTIMIZERS] = mirror_arg(  # type: ignore[valid-type]
        WeightOptimizer, "kind")
    weight_lr: float = mirror_arg(WeightOptimizer, "lr")
    weight_momentum: float = mirror_arg(WeightOptimizer, "momentum")
    weight_normalise: bool = mirror_arg(WeightOptimizer, "normalise")
    weight_rms_decay: float = mirror_arg(WeightOptimizer, "rms_decay")
    # reference-compatible updates: momentum over all rows at every step (the paper's code)
    dense_weight_updates: bool = mirror_arg(WeightOptimizer, "dense")


@dataclass
class PruningSection:
    enabled: bool = False
    # A registered pruning rule (betaweighter.pruning.PRUNING_RULES; budget: keep the
    # fraction `keep`, chosen by the weights at the end of `score_epochs`), or one
    # registered by experiment.imports. The keys below copy the defaults, ranges and help
    # of the rules' and of PruningSchedule's fields, where they are declared.
    rule: str = mirror_arg(PruningScheduler, "rule", registry=PRUNING_RULES)
    epsilon: float = mirror(CDFRule, "epsilon")
    delta: float = mirror(CDFRule, "delta")
    quantile: float = mirror(QuantileRule, "quantile")
    keep: float = mirror(BudgetRule, "keep")
    score_epochs: int | None = mirror(PruningSchedule, "score_epochs")
    control: str | list[int] = mirror(MatchedRule, "control", registry=CONTROL_RULES)
    warmup: int = mirror(PruningSchedule, "warmup")
    every: int = mirror(PruningSchedule, "every")
    max_fraction: float = mirror(PruningSchedule, "max_fraction")
    soft: bool = mirror(PruningSchedule, "soft")
    skip_prob: float = mirror(PruningSchedule, "skip_prob")
    anneal_epochs: int | None = mirror(PruningSchedule, "anneal_epochs")
    # Options of a rule of your own that no key above names (checked against its fields).
    options: dict = field(default_factory=dict)


@dataclass
class TrainSection:
    epochs: int = field(default=35, metadata=_range(1))
    # Sinks besides metrics.csv (always written): tensorboard (<run>/tensorboard), wandb.
    loggers: list[Literal[LOGGERS]] = field(  # type: ignore[valid-type]
        default_factory=lambda: ["csv"])
    batch_size: int = field(default=32, metadata=_range(1))
    optimizer: Literal[OPTIMIZER_NAMES] = "sgd"  # type: ignore[valid-type]
    lr: float = field(default=0.1, metadata=_range(0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0, 1))
    weight_decay: float = field(default=1e-4, metadata=_range(0))
    schedule: Literal[SCHEDULE_NAMES] = "multistep"  # type: ignore[valid-type]
    milestones: list[int] = field(default_factory=lambda: [15, 25], metadata=_range(1))
    gamma: float = field(default=0.1, metadata=_range(0, 1, lo_open=True))
    max_steps_per_epoch: int | None = field(default=None, metadata=_range(1))
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: Literal[PRECISION_NAMES] = "fp32"  # type: ignore[valid-type]
    sync_batchnorm: bool = False  # under torchrun: BatchNorm statistics over all processes


@dataclass
class EvaluateSection:
    # The per-epoch model selection of a run: a linear probe on target_train -> target_val.
    every: int = field(default=1, metadata=_range(1))
    batch_size: int = field(default=256, metadata=_range(1))
    max_iter: int = field(default=1000, metadata=_range(1))
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0],
                                metadata=_range(0, lo_open=True, min_items=1))
    # C values of the final test probe; null = the 45-value grid of arXiv:2011.13377
    final_c_grid: list[float] | None = field(default=None,
                                             metadata=_range(0, lo_open=True, min_items=1))
    # Transfer tasks for `betaweighter evaluate RUN --task NAME`.
    linear: LinearTask = field(default_factory=LinearTask)
    fewshot: FewshotTask = field(default_factory=FewshotTask)
    finetune: FinetuneTask = field(default_factory=FinetuneTask)
    detection: DetectionTask = field(default_factory=DetectionTask)
    invariance: InvarianceTask = field(default_factory=InvarianceTask)
    segmentation: SegmentationTask = field(default_factory=SegmentationTask)
    instance_segmentation: InstanceSegmentationTask = field(
        default_factory=InstanceSegmentationTask)


def task_names() -> tuple[str, ...]:
    """The transfer tasks of ``betaweighter evaluate --task``: the sections of
    `EvaluateSection`, where a task is named once (each field that holds a task section)."""
    return tuple(_task_sections())


def task_section(name: str) -> type:
    """The section class of the transfer task `name` (e.g. `LinearTask` for ``linear``)."""
    return _task_sections()[name]


def _task_sections() -> dict[str, type]:
    hints = typing.get_type_hints(EvaluateSection)
    return {f.name: hints[f.name] for f in dataclasses.fields(EvaluateSection)
            if dataclasses.is_dataclass(hints[f.name])}


@dataclass
class Config:
    experiment: ExperimentSection = field(default_factory=ExperimentSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    pretext: PretextSection = field(default_factory=PretextSection)
    weights: WeightsSection = field(default_factory=WeightsSection)
    meta: MetaSection = field(default_factory=MetaSection)
    pruning: PruningSection = field(default_factory=PruningSection)
    train: TrainSection = field(default_factory=TrainSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
