"""Build every component of a run from its config: data, pretext and model, weights,
optimisers, schedules, the meta objective, MetaWeighter and the pruning scheduler."""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import betaweighter as bw
from betaweighter import data as bwdata
from betaweighter.data.sources import DATA_SOURCES
from betaweighter.errors import BetaweighterError, CheckpointError, ConfigError
from betaweighter.experiment.config import Config
from betaweighter.experiment.optimizers import OPTIMIZERS, SCHEDULES
from betaweighter.meta.distributed import unwrap as dist_unwrap
from betaweighter.meta.objectives import OBJECTIVES
from betaweighter.meta.weighter import MetaWeighter
from betaweighter.models import MODELS, Backbone, build_model, load_backbone
from betaweighter.pretext.augment import Augment
from betaweighter.pretext.base import PRETEXTS, Pretext
from betaweighter.pretext.rpn import RPNPretext, resnet_model_config
from betaweighter.pretext.twoview import TwoViewPretext
from betaweighter.pretext.views import simclr_view
from betaweighter.pruning import PruningSchedule, PruningScheduler
from betaweighter.pruning.rules import build_rule
from betaweighter.runtime import resolve_device, world
from betaweighter.weights.base import WEIGHTINGS, InstanceWeights

__all__ = ["Components", "build", "build_augment", "build_weights", "checked_kwargs",
           "pretext_builder"]



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
    """The data of ``cfg.data``. A builder's own check of its arguments (a ValueError or
    TypeError, say a split larger than a class) becomes a ConfigError naming
    ``data.options``; the errors about the files themselves pass unchanged."""
    try:
        return _build_data(cfg, seed, splits)
    except BetaweighterError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config section 'data.options' for data {cfg.data.name!r}: {e}"
                          ) from None


def _build_data(cfg: Config, seed: int, splits: Any) -> bwdata.DataBundle:
    """Call the registered builder of ``data.name`` with its `DataSection` fields, the
    run's seed, a resumed run's `splits` (if the builder takes them) and ``data.options``."""
    d = cfg.data
    entry = DATA_SOURCES.get(d.name)
    fields = entry.meta.get("fields", ())
    builder = entry.obj
    kw = checked_kwargs(builder, dict(d.options), "data.options", (*fields, "seed"))
    if splits is not None and "splits" in inspect.signature(builder).parameters:
        kw["splits"] = splits  # a resumed run reads back the exact splits it started with
    return builder(**{f: getattr(d, f) for f in fields}, **kw, seed=seed)


def _backbone(cfg: Config) -> tuple[nn.Module, dict[str, Any]]:
    """The model of `cfg.model` with the rotation head (4 outputs), started from the
    checkpoint ``pretext.init`` when one is given: loaded strictly, so a checkpoint of
    another architecture or width is refused rather than silently ignored."""
    model_config: dict[str, Any] = {"name": cfg.model.name, "num_classes": 4}
    for key in MODELS.get(cfg.model.name).meta.get("fields", ()):  # the keys it takes
        if getattr(cfg.model, key) is not None:  # None: the builder's default
            model_config[key] = getattr(cfg.model, key)
    model = build_model(**model_config)
    if cfg.pretext.init:
        loaded = _init_backbone(cfg)
        published = loaded.source is not None and loaded.source["format"] != "betaweighter"
        target = model.encoder if published else model  # a published file has no head of ours
        source, want = loaded.encoder.state_dict() if published else loaded.state_dict(), \
            target.state_dict()
        bad = sorted({k for k in want if k not in source or source[k].shape != want[k].shape}
                     | {k for k in source if k not in want})
        if bad:
            raise ConfigError(
                f"config key 'pretext.init': the checkpoint {cfg.pretext.init} holds another "
                f"network than model {model_config} ({len(bad)} tensors differ, e.g. "
                f"{', '.join(bad[:3])}); set model.name, model.width and model.blocks to the "
                "checkpoint's, or drop pretext.init")
        target.load_state_dict(source, strict=True)
    return model, model_config


def _init_backbone(cfg: Config) -> Backbone:
    """The backbone of ``pretext.init``, read in the layout ``pretext.init_format``."""
    try:
        assert cfg.pretext.init is not None  # the callers check it
        return load_backbone(cfg.pretext.init, "cpu", format=cfg.pretext.init_format)
    except CheckpointError as err:
        if "unknown checkpoint format" in str(err):
            raise ConfigError(f"config key 'pretext.init_format': {err}") from None
        raise


def _single(name: str, cls: type[Pretext], models: tuple[str, ...] | None
            ) -> Callable[[Config, dict[str, Any]], tuple[Pretext, dict[str, Any]]]:
    """A builder for a pretext made as ``cls(backbone, **pretext.options)`` (rotation, MAE,
    a registered task of one's own) on the model of `cfg.model` with the rotation head."""

    def builder(cfg: Config, options: dict[str, Any]) -> tuple[Pretext, dict[str, Any]]:
        checked_kwargs(cls, options, "pretext.options", ("backbone",))
        if models is not None and cfg.model.name not in models:
            raise ConfigError(f"config key 'model.name': pretext {name} needs model.name "
                              f"{' or '.join(models)}, got {cfg.model.name!r}")
        model, model_config = _backbone(cfg)
        try:
            return cls(model, **options), model_config
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config section 'pretext.options' for {name!r}: {e}") from None

    return builder


def _two_view(cls: type[TwoViewPretext]) -> Callable[[Config, dict[str, Any]],
                                                      tuple[Pretext, dict[str, Any]]]:
    """A builder for a two-view pretext (SimCLR, MoCo, BYOL, SimSiam, SwAV): the backbone keeps
    the rotation head (unused and frozen) so that `load_backbone` rebuilds it; the view
    pipelines are built from the data in `build` (`Pretext.bind_data`)."""

    def builder(cfg: Config, options: dict[str, Any]) -> tuple[Pretext, dict[str, Any]]:
        checked_kwargs(cls, options, "pretext.options", ("backbone", "image_size", "mean",
                                                         "std"))
        augment = options.get("augment") or {}
        if not isinstance(augment, dict):
            raise ConfigError(f"config key 'pretext.options.augment' must be a mapping, got "
                              f"{augment!r}")
        checked_kwargs(simclr_view, augment, "pretext.options.augment",
                       ("image_size", "mean", "std", "normalised_input"))
        model, model_config = _backbone(cfg)
        try:
            return cls(model, **options), model_config
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config section 'pretext.options' for {cfg.pretext.name!r}: "
                              f"{e}") from None

    return builder


def _rpn(cfg: Config, options: dict[str, Any]) -> tuple[Pretext, dict[str, Any]]:
    """FPN + RPN on pseudo boxes over a ResNet: a fresh one (model.name) or the backbone of
    the checkpoint ``pretext.init`` (e.g. a rotation run)."""
    checked_kwargs(RPNPretext, options, "pretext.options", ("backbone", "mean", "std"))
    if cfg.pretext.init:
        backbone = _init_backbone(cfg)
        arch = (backbone.source or {}).get("arch")
        if arch not in (None, "resnet18", "resnet50"):
            raise ConfigError(f"config key 'pretext.init': pretext rpn trains a resnet18 or "
                              f"resnet50, and {cfg.pretext.init} holds a {arch}")
        model_config = resnet_model_config(backbone)
        if model_config["name"] != cfg.model.name:
            raise ConfigError(f"config key 'model.name': {cfg.model.name!r}, but the checkpoint "
                              f"pretext.init ({cfg.pretext.init}) holds a "
                              f"{model_config['name']}: set model.name={model_config['name']}")
    else:
        if cfg.model.name not in ("resnet18", "resnet50"):
            raise ConfigError(f"config key 'model.name': pretext rpn needs a ResNet (resnet18 "
                              f"or resnet50), got {cfg.model.name!r}")
        backbone = build_model(cfg.model.name, num_classes=4)
        model_config = {"name": cfg.model.name, "num_classes": 4}
    try:
        return RPNPretext(backbone.train(), **options), model_config
    except (TypeError, ValueError, ImportError) as e:
        raise ConfigError(f"config section 'pretext.options' for rpn: {e}") from None


def pretext_builder(name: str) -> Callable[[Config, dict[str, Any]],
                                          tuple[Pretext, dict[str, Any]]]:
    """The builder of the registered pretext `name` (``PRETEXTS``): cfg, options ->
    (pretext module, model_config of its backbone)."""
    entry = PRETEXTS.get(name)
    if issubclass(entry.obj, RPNPretext):
        return _rpn
    if issubclass(entry.obj, TwoViewPretext):
        return _two_view(entry.obj)
    return _single(name, entry.obj, entry.meta.get("models"))


def build_augment(cfg: Config, bundle: bwdata.DataBundle) -> Augment | None:
    """The ``pretext.augment`` policy for the bundle's normalisation (None: nothing).

    Two-view pretexts draw their own views (``pretext.options.augment``), so a preset on
    top of them is refused rather than silently stacked."""
    if (issubclass(PRETEXTS.get(cfg.pretext.name).obj, TwoViewPretext)
            and cfg.pretext.augment != "default"):
        raise ConfigError(
            f"config key 'pretext.augment': {cfg.pretext.name} augments its two views "
            "itself; choose their invariances with pretext.options.augment instead (spatial "
            "only: {jitter_prob: 0, grayscale_prob: 0, blur_prob: 0}; appearance only: "
            "{min_scale: 1.0, flip_prob: 0}) and leave pretext.augment at default")
    try:
        augment = Augment(cfg.pretext.augment, bundle.mean, bundle.std)
    except ValueError as e:
        raise ConfigError(f"config key 'pretext.augment': {e}") from None
    return augment if augment else None


def build_weights(cfg: Config, num_instances: int) -> InstanceWeights:
    cls = WEIGHTINGS.get(cfg.weights.method).obj
    kw = checked_kwargs(cls, cfg.weights.options, "weights.options", ("num_instances",))
    if "seed" in inspect.signature(cls).parameters and "seed" not in kw:
        kw["seed"] = cfg.experiment.seed  # seeded randomness follows the run's seed
    try:
        return cls(num_instances, **kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config section 'weights.options' for method "
                          f"{cfg.weights.method!r}: {e}") from None


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser ``train.optimizer`` names, over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS[cfg.train.optimizer](params, cfg.train)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer) -> Any:
    """The learning-rate schedule ``train.schedule`` names."""
    return SCHEDULES[cfg.train.schedule](optimizer, cfg.train)


def build_meta(cfg: Config, model: nn.Module, weights: InstanceWeights,
               optimizer: torch.optim.Optimizer, target: Any, scaler: Any) -> MetaWeighter:
    m = cfg.meta
    entry = OBJECTIVES.get(m.objective)
    objective = entry.obj(**{arg: getattr(m, key) for key, arg in entry.meta["fields"].items()},
                          **entry.meta["options"], seed=cfg.experiment.seed)
    try:
        objective.check_model(dist_unwrap(model))
    except ValueError as e:
        raise ConfigError(f"config key 'meta.objective': {m.objective}: {e}, not pretext "
                          f"{cfg.pretext.name!r}") from None
    if target is None:
        raise ConfigError(f"config key 'meta.objective': {m.objective} needs the data's "
                          f"labelled {entry.meta['target']}, which data {cfg.data.name!r} "
                          "does not provide (detection targets: data.name=shapes), or "
                          "another objective (prototypical)")
    weight_optimizer = None
    if isinstance(weights, bw.weights.LearnedWeights):
        weight_optimizer = bw.WeightOptimizer(
            m.weight_optimizer, m.weight_lr, momentum=m.weight_momentum,
            normalise=m.weight_normalise, rms_decay=m.weight_rms_decay,
            dense=m.dense_weight_updates)
    try:
        return MetaWeighter(model, weights, optimizer, objective, target=target,
                            weight_optimizer=weight_optimizer, meta_gradient=m.meta_gradient,
                            every=m.every, direction=m.direction,
                            direction_decay=m.direction_decay, inner_steps=m.inner_steps,
                            normalise=m.normalise, precision=cfg.train.precision,
                            scaler=scaler, shuffle_meta_gradients=m.shuffle_meta_gradients)
    except (ValueError, TypeError, ImportError) as e:
        raise ConfigError(f"config section 'meta': {e}") from None


def build_pruner(cfg: Config, weights: InstanceWeights, in_domain: Any) -> PruningScheduler:
    """The scheduler of ``pruning``: the registered rule `pruning.rule` with the section's
    keys its fields name (and ``pruning.options``), a `PruningSchedule` of the others."""
    p = cfg.pruning
    options = dict(p.options)
    try:
        rule = build_rule(p.rule, vars(p), options)
        if options:
            raise TypeError(f"rule {p.rule!r} has no options {sorted(options)}")
        schedule = PruningSchedule(**{f.name: getattr(p, f.name)
                                      for f in dataclasses.fields(PruningSchedule)})
        return PruningScheduler(weights, rule, schedule, total_epochs=cfg.train.epochs,
                                seed=cfg.experiment.seed, in_domain=in_domain)
    except TypeError as e:
        raise ConfigError(f"config key 'pruning.options': {e}") from None
    except ValueError as e:
        raise ConfigError(f"config section 'pruning': {e}") from None


def _check_depth(cfg: Config, image_size: int) -> None:
    """Each conv-net block halves the input (a 2x2 max-pool), so ``model.blocks`` may not
    exceed log2 of the image side: refused here, before torch fails inside a forward."""
    blocks = cfg.model.blocks
    if cfg.model.name == "convnet" and 2 ** blocks > image_size:
        most = max(int(image_size).bit_length() - 1, 0)
        raise ConfigError(f"config key 'model.blocks': {blocks} blocks halve the {image_size} "
                          f"px images {blocks} times, below one pixel; at most {most} fit "
                          f"(set model.blocks <= {most}, or use larger images)")
    if cfg.model.name == "vit_tiny":
        side, patch = cfg.model.image_size, cfg.model.patch_size
        if side is not None and side != image_size:
            raise ConfigError(f"config key 'model.image_size': {side}, but the data's images "
                              f"are {image_size} px; set it to {image_size} or null (the "
                              "data's)")
        if image_size % patch:
            raise ConfigError(f"config key 'model.patch_size': {patch} px patches do not tile "
                              f"the {image_size} px images; choose a divisor of {image_size}")


def _check_sync_batchnorm(cfg: Config, device: torch.device) -> None:
    """SyncBatchNorm runs on GPUs only, and torch gives it no forward-mode derivative."""
    if device.type != "cuda":
        raise ConfigError("config key 'train.sync_batchnorm': torch's SyncBatchNorm needs "
                          "CUDA devices; set it to false on the CPU")
    learned = WEIGHTINGS.get(cfg.weights.method).obj.needs_meta_gradient
    if learned and cfg.meta.meta_gradient in ("auto", "forward"):
        raise ConfigError("config key 'train.sync_batchnorm': SyncBatchNorm has no "
                          "forward-mode derivative in torch, so the forward-mode "
                          "meta-gradient cannot pass through it; set "
                          "meta.meta_gradient=finite_difference (or sync_batchnorm=false)")


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
    fit_seconds: float = 0.0  # the weights' one-off fit (NN distances, first clusters)

    @property
    def backbone(self) -> nn.Module:
        return self.pretext.backbone


def build(cfg: Config, splits: Any = None) -> Components:
    """Everything a run needs, seeded by ``experiment.seed``."""
    seed = cfg.experiment.seed
    device = resolve_device(cfg.train.device, key="config key 'train.device'")
    bundle = build_data(cfg, seed, splits)
    _check_depth(cfg, int(bundle.image_size))
    if cfg.model.name == "vit_tiny" and cfg.model.image_size is None:  # the data's side
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, image_size=int(bundle.image_size)))
    torch.manual_seed(seed)
    name = cfg.pretext.name
    pretext, model_config = pretext_builder(name)(cfg, dict(cfg.pretext.options))
    pretext.bind_data(bundle)
    pretext.to(device)
    model: nn.Module = pretext
    if cfg.train.sync_batchnorm:
        _check_sync_batchnorm(cfg, device)
    if world()[0] > 1:
        if cfg.train.sync_batchnorm:
            pretext = nn.SyncBatchNorm.convert_sync_batchnorm(pretext)
        model = nn.parallel.DistributedDataParallel(
            pretext, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(cfg, pretext)
    scheduler = build_scheduler(cfg, optimizer)
    weights = build_weights(cfg, len(bundle.pool)).to(device)  # type: ignore[arg-type]
    start = time.perf_counter()  # NN-Weighter distances, clusters; others do nothing
    weights.fit(bundle.pool, bundle.target_train, pretext)
    fit_seconds = time.perf_counter() - start
    scaler = torch.amp.GradScaler(device.type) if cfg.train.precision == "fp16" else None
    target = getattr(bundle, OBJECTIVES.get(cfg.meta.objective).meta["target"], None)
    meta = build_meta(cfg, model, weights, optimizer, target, scaler)
    pruner = build_pruner(cfg, weights, bundle.in_domain) if cfg.pruning.enabled else None
    return Components(bundle, pretext, model, model_config, optimizer, scheduler, weights, meta,
                      pruner, device, scaler, build_augment(cfg, bundle), fit_seconds)
