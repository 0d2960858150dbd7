"""Build every component of a run from its config: data, model, weights, optimisers,
schedules, the meta objective, MetaWeighter and the pruning scheduler."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import betaweighter as bw
from betaweighter import data as bwdata
from betaweighter.experiment.config import Config, ConfigError
from betaweighter.meta.weighter import MetaWeighter
from betaweighter.models import Backbone, build_model
from betaweighter.pruning import PruningScheduler
from betaweighter.weights.base import InstanceWeights

# config name -> name of the class exported by `betaweighter`
WEIGHT_CLASSES = {
    "bdw": "BetaWeights",
    "dw": "PointWeights",
    "rotnet": "UniformWeights",
    "l2rw": "L2RW",
    "nn": "NearestNeighbourWeights",
    "weightnet": "WeightNet",
    "heuristic": "LossHeuristicWeights",
    "random": "RandomWeights",
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'train.device': 'cuda' was asked for but no GPU is "
                          "visible; use 'auto' or 'cpu'")
    return torch.device(name)


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


def build_backbone(cfg: Config) -> tuple[Backbone, dict[str, Any]]:
    """The model, and the `model_config` that rebuilds it (saved in checkpoints)."""
    model_config: dict[str, Any] = {"name": cfg.model.name, "num_classes": 4}
    if cfg.model.name == "convnet":
        model_config.update(width=cfg.model.width, blocks=cfg.model.blocks)
    return build_model(**model_config), model_config


def build_weights(cfg: Config, num_instances: int) -> InstanceWeights:
    cls = getattr(bw, WEIGHT_CLASSES[cfg.weights.method])
    kw = checked_kwargs(cls, cfg.weights.options, "weights.options", ("num_instances",))
    try:
        return cls(num_instances, **kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config section 'weights.options' for method "
                          f"{cfg.weights.method!r}: {e}") from None


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum,
                               weight_decay=t.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer):
    t = cfg.train
    if t.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, t.milestones, gamma=t.gamma)
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def build_objective(cfg: Config) -> Any:
    m = cfg.meta
    return bw.PrototypicalLoss(m.way, m.shot, m.query, seed=cfg.experiment.seed)


def build_meta(cfg: Config, model: torch.nn.Module, weights: InstanceWeights,
               optimizer: torch.optim.Optimizer, target: Any) -> MetaWeighter:
    m = cfg.meta
    objective = build_objective(cfg)
    try:
        return MetaWeighter(
            model, weights, optimizer, objective, target=target,
            weight_lr=m.weight_lr, weight_optimizer=m.weight_optimizer,
            weight_momentum=m.weight_momentum, engine=m.engine, every=m.every,
            normalise=m.normalise, inner_steps=m.inner_steps, meta_gradient=m.meta_gradient,
            dense_weight_updates=m.dense_weight_updates,
        )
    except ValueError as e:
        raise ConfigError(f"config section 'meta': {e}") from None


def build_pruner(cfg: Config, weights: InstanceWeights, in_domain: Any) -> PruningScheduler:
    p = cfg.pruning
    return PruningScheduler(
        weights, p.rule, epsilon=p.epsilon, delta=p.delta, quantile=p.quantile,
        control=p.control, warmup=p.warmup if p.enabled else 10**9, every=p.every,
        max_fraction=p.max_fraction, soft=p.soft and p.enabled, skip_prob=p.skip_prob,
        total_epochs=cfg.train.epochs, anneal_epochs=p.anneal_epochs,
        seed=cfg.experiment.seed, in_domain=in_domain,
    )


@dataclass
class Components:
    bundle: bwdata.DataBundle
    model: Backbone
    model_config: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    weights: InstanceWeights
    meta: MetaWeighter
    pruner: PruningScheduler
    device: torch.device


def build(cfg: Config, splits: Any = None) -> Components:
    """Everything a run needs, seeded by ``experiment.seed``."""
    seed = cfg.experiment.seed
    device = resolve_device(cfg.train.device)
    bundle = build_data(cfg, seed, splits)
    torch.manual_seed(seed)
    model, model_config = build_backbone(cfg)
    model.to(device)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    weights = build_weights(cfg, len(bundle.pool)).to(device)
    if callable(getattr(weights, "fit", None)):  # NN-Weighter: distances to the target set
        weights.fit(bundle.pool, bundle.target_train, model)
    meta = build_meta(cfg, model, weights, optimizer, bundle.target_train)
    pruner = build_pruner(cfg, weights, bundle.in_domain)
    return Components(bundle, model, model_config, optimizer, scheduler, weights, meta,
                      pruner, device)
