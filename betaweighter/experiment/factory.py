"""Build every component of a run from its config: data, pretext and model, weights,
optimisers, schedules, the meta objective, MetaWeighter and the pruning scheduler."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import betaweighter as bw
from betaweighter import data as bwdata
from betaweighter.errors import ConfigError
from betaweighter.experiment.config import Config
from betaweighter.meta.weighter import MetaWeighter
from betaweighter.models import build_model
from betaweighter.pretext.augment import Augment
from betaweighter.pretext.base import Pretext
from betaweighter.pretext.rotation import RotationPretext
from betaweighter.pruning import PruningScheduler
from betaweighter.runtime import resolve_device, world
from betaweighter.weights.base import InstanceWeights

__all__ = ["PRETEXT_BUILDERS", "WEIGHT_CLASSES", "Components", "build", "build_augment",
           "build_weights", "checked_kwargs"]

# config name -> name of the class exported by `betaweighter`
WEIGHT_CLASSES = {
    "bdw": "BetaWeights", "dw": "PointWeights", "rotnet": "UniformWeights", "l2rw": "L2RW",
    "nn": "NearestNeighbourWeights", "weightnet": "WeightNet",
    "heuristic": "LossHeuristicWeights", "random": "RandomWeights",
}


def checked_kwargs(fn: Callable, options: dict[str, Any], key: str,
                   reserved: tuple[str, ...] = ()) -> dict[str, Any]:
    """`options` as keyword arguments of `fn`, refusing names it does not take."""
    params = inspect.signature(fn).parameters
    allowed = [n for n, p in params.items()
               if n not in reserved and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for name in options:
        if name not in allowed:
            raise ConfigError(f"unknown config key '{key}.{name}'; {fn.__qualname__} takes: "
                              + ", ".join(allowed))
    return dict(options)


def build_data(cfg: Config, seed: int, splits: Any = None) -> bwdata.DataBundle:
    d = cfg.data
    opts = dict(d.options)
    if d.name == "demo":  # fully determined by its seed: no split file to read back
        return bwdata.demo(**checked_kwargs(bwdata.demo, opts, "data.options", ("seed",)),
                           seed=seed)
    if splits is not None:  # a resumed run reads back the exact splits it was started with
        opts["splits"] = splits
    if d.name == "stl10":
        kw = checked_kwargs(bwdata.stl10, opts, "data.options", ("root", "download", "seed"))
        return bwdata.stl10(d.root, download=d.download, seed=seed, **kw)
    if d.name == "decathlon":
        kw = checked_kwargs(bwdata.decathlon, opts, "data.options", ("root", "target", "seed"))
        return bwdata.decathlon(d.root, d.target, seed=seed, **kw)
    kw = checked_kwargs(bwdata.image_folders, opts, "data.options",
                        ("pool_root", "target_root", "seed"))
    return bwdata.image_folders(d.pool_root, d.target_root, seed=seed, **kw)


def _rotation(cfg: Config, options: dict[str, Any]) -> tuple[Pretext, dict[str, Any]]:
    checked_kwargs(RotationPretext, options, "pretext.options", ("backbone",))
    model_config: dict[str, Any] = {"name": cfg.model.name, "num_classes": 4}
    if cfg.model.name == "convnet":
        model_config.update(width=cfg.model.width, blocks=cfg.model.blocks)
    return RotationPretext(build_model(**model_config), **options), model_config


#: pretext name -> builder(cfg, options) -> (pretext module, model_config of its backbone)
PRETEXT_BUILDERS: dict[str, Callable[[Config, dict[str, Any]],
                                     tuple[Pretext, dict[str, Any]]]] = {
    "rotation": _rotation,
}


def build_augment(cfg: Config, bundle: bwdata.DataBundle) -> Augment | None:
    """The ``pretext.augment`` policy for the bundle's normalisation (None: nothing)."""
    try:
        augment = Augment(cfg.pretext.augment, bundle.mean, bundle.std)
    except ValueError as e:
        raise ConfigError(f"config key 'pretext.augment': {e}") from None
    return augment if augment else None


def build_weights(cfg: Config, num_instances: int) -> InstanceWeights:
    cls = getattr(bw, WEIGHT_CLASSES[cfg.weights.method])
    kw = checked_kwargs(cls, cfg.weights.options, "weights.options", ("num_instances",))
    try:
        return cls(num_instances, **kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config section 'weights.options' for method "
                          f"{cfg.weights.method!r}: {e}") from None


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=t.lr, momentum=t.momentum,
                                   weight_decay=t.weight_decay)
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=t.lr, weight_decay=t.weight_decay)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer) -> Any:
    t = cfg.train
    if t.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, t.milestones, gamma=t.gamma)
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def build_meta(cfg: Config, model: nn.Module, weights: InstanceWeights,
               optimizer: torch.optim.Optimizer, target: Any, scaler: Any) -> MetaWeighter:
    m = cfg.meta
    objective = bw.PrototypicalLoss(m.way, m.shot, m.query, seed=cfg.experiment.seed)
    weight_optimizer = None
    if isinstance(weights, bw.weights.LearnedWeights):
        weight_optimizer = bw.WeightOptimizer(
            m.weight_optimizer, m.weight_lr, momentum=m.weight_momentum,
            normalise=m.weight_normalise, rms_decay=m.weight_rms_decay,
            dense=m.dense_weight_updates)
    try:
        return MetaWeighter(model, weights, optimizer, objective, target=target,
                            weight_optimizer=weight_optimizer, meta_gradient=m.meta_gradient,
                            every=m.every, inner_steps=m.inner_steps, normalise=m.normalise,
                            precision=cfg.train.precision, scaler=scaler)
    except (ValueError, TypeError, ImportError) as e:
        raise ConfigError(f"config section 'meta': {e}") from None


def build_pruner(cfg: Config, weights: InstanceWeights, in_domain: Any) -> PruningScheduler:
    p = cfg.pruning
    try:
        return PruningScheduler(
            weights, p.rule, epsilon=p.epsilon, delta=p.delta, quantile=p.quantile,
            control=p.control, warmup=p.warmup, every=p.every, max_fraction=p.max_fraction,
            soft=p.soft, skip_prob=p.skip_prob, total_epochs=cfg.train.epochs,
            anneal_epochs=p.anneal_epochs, seed=cfg.experiment.seed, in_domain=in_domain)
    except ValueError as e:
        raise ConfigError(f"config section 'pruning': {e}") from None


@dataclass
class Components:
    """Everything a run trains with. `model` is what the optimiser and MetaWeighter see
    (the pretext module, wrapped in DDP under torchrun); `pretext` is the module inside."""

    bundle: bwdata.DataBundle
    pretext: Pretext
    model: nn.Module
    model_config: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    weights: InstanceWeights
    meta: MetaWeighter
    pruner: PruningScheduler | None
    device: torch.device
    scaler: Any
    augment: Augment | None = None  # applied to each pool batch before pretext.batch

    @property
    def backbone(self) -> nn.Module:
        return self.pretext.backbone


def build(cfg: Config, splits: Any = None) -> Components:
    """Everything a run needs, seeded by ``experiment.seed``."""
    seed = cfg.experiment.seed
    device = resolve_device(cfg.train.device, key="config key 'train.device'")
    bundle = build_data(cfg, seed, splits)
    torch.manual_seed(seed)
    name = cfg.pretext.name
    pretext, model_config = PRETEXT_BUILDERS[name](cfg, dict(cfg.pretext.options))
    pretext.to(device)
    model: nn.Module = pretext
    if world()[0] > 1:
        if cfg.train.sync_batchnorm:
            pretext = nn.SyncBatchNorm.convert_sync_batchnorm(pretext)
        model = nn.parallel.DistributedDataParallel(
            pretext, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(cfg, pretext)
    scheduler = build_scheduler(cfg, optimizer)
    weights = build_weights(cfg, len(bundle.pool)).to(device)
    if callable(getattr(weights, "fit", None)):  # NN-Weighter: distances to the target set
        weights.fit(bundle.pool, bundle.target_train, pretext)
    scaler = torch.amp.GradScaler(device.type) if cfg.train.precision == "fp16" else None
    meta = build_meta(cfg, model, weights, optimizer, bundle.target_train, scaler)
    pruner = build_pruner(cfg, weights, bundle.in_domain) if cfg.pruning.enabled else None
    return Components(bundle, pretext, model, model_config, optimizer, scheduler, weights, meta,
                      pruner, device, scaler, build_augment(cfg, bundle))
