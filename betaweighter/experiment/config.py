"""The one config schema: YAML parsed into typed dataclasses, strictly.

An unknown key, a duplicate key, a wrong type, a non-finite number or an out-of-range value
fails before any work starts, with the dotted key path, the offending value and what is
allowed. The same checks apply to ``--set a.b=c`` overrides from the command line.
Numbers may be written in any form Python's ``float()`` reads (``1e-3`` included).

Relative paths in a config file are relative to that file's folder; relative paths given
with ``--set`` are relative to the working directory. Both are stored absolute in the run,
so a finished run can be resumed, plotted or evaluated from anywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from betaweighter.data.options import check_options
from betaweighter.errors import ConfigError, quote
from betaweighter.experiment.loggers import LOGGERS
from betaweighter.experiment.schema import build, join, read_yaml
from betaweighter.experiment.shipped import config_file
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
from betaweighter.pretext.augment import AUGMENTATIONS, PRESETS
from betaweighter.pretext.base import PRETEXTS
from betaweighter.weights.base import WEIGHTINGS

__all__ = ["Config", "ConfigError", "dump_config", "load_config", "parse_override"]

AUGMENT_PRESETS = tuple(PRESETS)


_range = span


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
    # demo: the embedded set (no files); mixture: drawn shapes with four kinds of
    # distractors (no files); stl10: STL-10 binaries under `root`; decathlon:
    # Visual Decathlon under `root` with `target` as the labelled domain; folders: your own
    # ImageFolder trees (`pool_root`, `target_root`); shapes: generated detection scenes
    # (betaweighter.data.shapes, no files).
    name: Literal["demo", "mixture", "stl10", "decathlon", "folders", "shapes"] = "demo"
    root: str | None = field(default=None, metadata=PATH)
    target: str | None = None
    pool_root: str | None = field(default=None, metadata=PATH)
    target_root: str | None = field(default=None, metadata=PATH)
    download: bool = False
    workers: int = field(default=0, metadata=_range(0))
    # Keyword arguments of the dataset builder (betaweighter.data.stl10, .decathlon,
    # .image_folders, .demo), checked against its signature.
    options: dict = field(default_factory=dict)


@dataclass
class ModelSection:
    name: Literal["convnet", "resnet18", "resnet50", "vit_tiny"] = "convnet"
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
    # The rotation model's head has 4 outputs, so a classification meta objective needs a
    # head of its own: use bw.ClassificationLoss(head=...) from Python for that.
    # detection: the RPN loss on `detection_batch` labelled target images (pretext rpn on
    # data with a detection target, e.g. shapes).
    objective: Literal["prototypical", "detection"] = "prototypical"
    detection_batch: int = field(default=4, metadata=_range(1))
    way: int = field(default=10, metadata=_range(2))
    shot: int = field(default=10, metadata=_range(1))
    query: int = field(default=10, metadata=_range(1))
    # one_sided: one extra no-grad forward against the training losses (the cheapest)
    meta_gradient: Literal["auto", "forward", "finite_difference", "one_sided",
                           "double_backward", "higher"] = "auto"
    every: int = field(default=1, metadata=_range(1))
    # fresh: each weight update uses its own episode's direction (the paper); running: a
    # moving average of the episodes' directions updates the weights of every batch
    direction: Literal["fresh", "running"] = "fresh"
    direction_decay: float = field(default=0.9, metadata=_range(0, 1, hi_open=True))
    inner_steps: int = field(default=1, metadata=_range(1))
    # divide the weighted loss by the sum of the weights: weights then change which data
    # teaches, not how fast the model learns, and their meta-gradients compete
    normalise: bool = False
    # the shuffled control: meta-gradients permuted across each batch's instances
    shuffle_meta_gradients: bool = False
    # The weight optimiser (betaweighter.WeightOptimizer): scale-free by default
    # (weight_normalise), so weight_lr is the movement per meta update of a typical signal.
    weight_optimizer: Literal["sgd", "adam"] = "sgd"
    weight_lr: float = field(default=0.1, metadata=_range(0, lo_open=True))
    weight_momentum: float = field(default=0.0, metadata=_range(0, 1, hi_open=True))
    weight_normalise: bool = True
    weight_rms_decay: float = field(default=0.99, metadata=_range(0, 1, hi_open=True))
    dense_weight_updates: bool = False


@dataclass
class PruningSection:
    enabled: bool = False
    # budget: keep the fraction `keep`, chosen by the weights at the end of `score_epochs`
    rule: Literal["cdf", "threshold", "quantile", "budget", "random", "lowest"] = "cdf"
    epsilon: float = field(default=0.1, metadata=_range(0, 1))
    delta: float = field(default=0.5, metadata=_range(0, 1, hi_open=True))
    quantile: float = field(default=0.1, metadata=_range(0, 1, hi_open=True))
    keep: float = field(default=0.5, metadata=_range(0, 1, lo_open=True))
    # after this many epochs, stop learning the weights and train plainly on what is kept
    # (the budget rule decides then); null: learn them throughout
    score_epochs: int | None = field(default=None, metadata=_range(1))
    # rule=random (lowest) prunes as many as this rule would, chosen at random (the
    # lowest-weight first): the controls; a list of per-epoch counts (e.g. copied from
    # another run's metrics.csv) matches that run.
    control: Literal["cdf", "threshold", "quantile", "budget"] | list[int] = field(
        default="cdf", metadata=_range(0))
    warmup: int = field(default=0, metadata=_range(0))
    every: int = field(default=1, metadata=_range(1))
    max_fraction: float = field(default=1.0, metadata=_range(0, 1))
    soft: bool = False
    skip_prob: float = field(default=0.5, metadata=_range(0, 1, hi_open=True))
    anneal_epochs: int | None = field(default=None, metadata=_range(0))


@dataclass
class TrainSection:
    epochs: int = field(default=35, metadata=_range(1))
    # Sinks besides metrics.csv (always written): tensorboard (<run>/tensorboard), wandb.
    loggers: list[Literal[LOGGERS]] = field(  # type: ignore[valid-type]
        default_factory=lambda: ["csv"])
    batch_size: int = field(default=32, metadata=_range(1))
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    lr: float = field(default=0.1, metadata=_range(0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0, 1))
    weight_decay: float = field(default=1e-4, metadata=_range(0))
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [15, 25], metadata=_range(1))
    gamma: float = field(default=0.1, metadata=_range(0, 1, lo_open=True))
    max_steps_per_epoch: int | None = field(default=None, metadata=_range(1))
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
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


@functools.cache
def path_keys(cls: type = Config, prefix: str = "") -> tuple[str, ...]:
    """Dotted keys of every path-valued option (resolved against the config's folder);
    computed once, since the schema does not change while the program runs."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = join(prefix, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += path_keys(hints[f.name], key)
        elif f.metadata.get("path"):
            keys.append(key)
    return tuple(keys)


# --- public API -----------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.01"`` -> (["train", "lr"], 0.01); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {quote(text)} must look like key.path=value (e.g. "
                          "train.lr=0.01)")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {quote(text)}: empty part in key {quote(key)}")
    return path, read_yaml(raw, f"the value of override {quote(text)}") if raw.strip() else None


def read_config_file(path: str | Path) -> dict:
    """The mapping stored in a YAML config file, with its relative paths made absolute."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"config file {str(p)!r} is a directory, not a YAML file")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text (byte {e.start}): save "
                          "it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {e.strerror}") from None
    loaded = read_yaml(text, f"config file {str(p)!r}")
    if loaded is None:
        warnings.warn(f"config file {p} is empty: every setting takes its default "
                      "(35 epochs of the demo data)", stacklevel=3)
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
    _resolve_paths(loaded, p.resolve().parent)
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> Config:
    """Read a YAML config (a file, or a shipped config's name such as ``"demo"``; or start
    from defaults / `base`), apply ``a.b=c`` overrides and validate everything. Raises
    ConfigError naming the offending key."""
    data: dict = {}
    if base is not None:
        data = yaml.safe_load(yaml.safe_dump(base))
    if path is not None:
        with config_file(str(path)) as found:  # a file, else a shipped config's name
            data = _merge(data, read_config_file(found))
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {quote(text)}: {quote(k)} is not a section")
        node[keys[-1]] = value
        if ".".join(keys) in path_keys() and isinstance(value, str):
            node[keys[-1]] = str(Path(value).expanduser().resolve())
    import_plugins(data)
    cfg = build(Config, data, "")
    _check_consistency(cfg)
    return cfg


def import_plugins(data: Any) -> None:
    """Import the modules of ``experiment.imports``, so the components they register are
    known before the config's names are checked."""
    names = data.get("experiment", {}).get("imports") if isinstance(data, dict) else None
    if not names:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"config key 'experiment.imports': expected a list of module names, "
                          f"got {quote(names)}")
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # an import runs arbitrary code: report whatever it raised
            raise ConfigError(f"config key 'experiment.imports': cannot import {name!r} "
                              f"({type(err).__name__}: {err}); install it or fix "
                              "sys.path") from None


def _resolve_paths(data: dict, base: Path) -> None:
    """Make the relative paths of a config file's mapping absolute, against `base`."""
    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value:
            return str((base / Path(value).expanduser()).resolve())
        return value

    for key in path_keys():
        *parents, last = key.split(".")
        node = data
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            node[last] = resolve(node[last])
    detection = data.get("evaluate", {}) if isinstance(data.get("evaluate"), dict) else {}
    sources = detection.get("detection", {}) if isinstance(detection.get("detection"),
                                                           dict) else {}
    for split in ("train", "test"):
        value = sources.get("data", {}).get(split) if isinstance(sources.get("data"),
                                                                 dict) else None
        for source in value if isinstance(value, list) else [value]:
            if isinstance(source, dict):
                for name in ("images", "annotations", "root"):
                    if name in source:
                        source[name] = resolve(source[name])


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check_consistency(cfg: Config) -> None:
    det = cfg.evaluate.detection
    if det.anchor_sizes is not None and len(det.anchor_sizes) != 5:
        raise ConfigError(f"config key 'evaluate.detection.anchor_sizes': one size per pyramid "
                          f"level (5 values), got {quote(det.anchor_sizes)}")
    d = cfg.data
    _check_data_options(d)
    if d.name == "decathlon" and not d.target:
        raise ConfigError("config key 'data.target': the Visual Decathlon target domain is "
                          "required (e.g. --set data.target=dtd)")
    if d.name in ("stl10", "decathlon") and not d.root:
        raise ConfigError(f"config key 'data.root': {d.name} needs the dataset's root folder "
                          "(e.g. --set data.root=/path/to/data)")
    if d.name == "folders" and not (d.pool_root and d.target_root):
        raise ConfigError("config keys 'data.pool_root' and 'data.target_root' are required "
                          "for data.name=folders")
    if sorted(cfg.train.milestones) != cfg.train.milestones:
        raise ConfigError(f"config key 'train.milestones': must be increasing, got "
                          f"{quote(cfg.train.milestones)}")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.train.device):
        raise ConfigError(f"config key 'train.device': unknown device "
                          f"{quote(cfg.train.device)}; use auto, cpu, cuda or cuda:N")


def _check_data_options(d: DataSection) -> None:
    """``data.options`` against the ranges its dataset builder declares (`ranged`), so a
    value out of range stops here rather than after a directory is made or an epoch run."""
    from betaweighter import data as bwdata

    builder = getattr(bwdata, "image_folders" if d.name == "folders" else d.name)
    check_options(builder, d.options, "data.options")


def dump_config(cfg: Config) -> str:
    """The config as YAML text (every key, resolved)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
