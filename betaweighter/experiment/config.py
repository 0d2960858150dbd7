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
import math
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from betaweighter.errors import ConfigError
from betaweighter.evaluate.invariance_transforms import PROTOCOLS, TRANSFORMS
from betaweighter.pretext.augment import AUGMENTATIONS, PRESETS

__all__ = ["METHODS", "Config", "ConfigError", "dump_config", "load_config", "parse_override"]

METHODS = ("bdw", "dw", "l2rw", "nn", "weightnet", "heuristic", "random", "rotnet")
PRETEXTS = ("rotation",)
AUGMENT_PRESETS = tuple(PRESETS)


def _range(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> dict:
    return {"range": (lo, hi, lo_open, hi_open)}


PATH = {"path": True}


@dataclass
class ExperimentSection:
    name: str = "experiment"
    seed: int = field(default=0, metadata=_range(0))
    output_root: str = "runs"  # relative to the working directory


@dataclass
class DataSection:
    # demo: the embedded set (no files); stl10: STL-10 binaries under `root`; decathlon:
    # Visual Decathlon under `root` with `target` as the labelled domain; folders: your own
    # ImageFolder trees (`pool_root`, `target_root`).
    name: Literal["demo", "stl10", "decathlon", "folders"] = "demo"
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
    name: Literal["convnet", "resnet18", "resnet50"] = "convnet"
    width: int = field(default=64, metadata=_range(1))
    blocks: int = field(default=4, metadata=_range(1))


@dataclass
class PretextSection:
    name: Literal[PRETEXTS] = "rotation"  # type: ignore[valid-type]
    # Augmentation of each pool image before the pretext task (betaweighter.pretext.augment):
    # default (nothing added), spatial (crop + flip), appearance (colour + grayscale + blur),
    # all, or a list of parts from crop, flip, colour, grayscale, blur.
    augment: (Literal[AUGMENT_PRESETS]  # type: ignore[valid-type]
              | list[Literal[AUGMENTATIONS]]) = "default"  # type: ignore[valid-type]
    # Keyword arguments of the pretext task's class (checked against its signature).
    options: dict = field(default_factory=dict)


@dataclass
class WeightsSection:
    method: Literal[METHODS] = "bdw"  # type: ignore[valid-type]
    # Keyword arguments of the method's class (checked against its signature).
    options: dict = field(default_factory=dict)


@dataclass
class MetaSection:
    # The rotation model's head has 4 outputs, so a classification meta objective needs a
    # head of its own: use bw.ClassificationLoss(head=...) from Python for that.
    objective: Literal["prototypical"] = "prototypical"
    way: int = field(default=10, metadata=_range(2))
    shot: int = field(default=10, metadata=_range(1))
    query: int = field(default=10, metadata=_range(1))
    meta_gradient: Literal["auto", "forward", "finite_difference", "double_backward",
                           "higher"] = "auto"
    every: int = field(default=1, metadata=_range(1))
    inner_steps: int = field(default=1, metadata=_range(1))
    normalise: bool = False
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
    rule: Literal["cdf", "threshold", "quantile", "random"] = "cdf"
    epsilon: float = field(default=0.1, metadata=_range(0, 1))
    delta: float = field(default=0.5, metadata=_range(0, 1, hi_open=True))
    quantile: float = field(default=0.1, metadata=_range(0, 1, hi_open=True))
    # rule=random prunes as many as this rule would, chosen at random (the control); a list
    # of per-epoch counts (e.g. copied from another run's metrics.csv) matches that run.
    control: Literal["cdf", "threshold", "quantile"] | list[int] = "cdf"
    warmup: int = field(default=0, metadata=_range(0))
    every: int = field(default=1, metadata=_range(1))
    max_fraction: float = field(default=1.0, metadata=_range(0, 1))
    soft: bool = False
    skip_prob: float = field(default=0.5, metadata=_range(0, 1, hi_open=True))
    anneal_epochs: int | None = field(default=None, metadata=_range(0))


@dataclass
class TrainSection:
    epochs: int = field(default=35, metadata=_range(1))
    batch_size: int = field(default=32, metadata=_range(1))
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    lr: float = field(default=0.1, metadata=_range(0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0, 1))
    weight_decay: float = field(default=1e-4, metadata=_range(0))
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [15, 25])
    gamma: float = field(default=0.1, metadata=_range(0, 1, lo_open=True))
    max_steps_per_epoch: int | None = field(default=None, metadata=_range(1))
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    sync_batchnorm: bool = False  # under torchrun: BatchNorm statistics over all processes


@dataclass
class ClassificationData:
    train: str | None = field(default=None, metadata=PATH)
    val: str | None = field(default=None, metadata=PATH)
    test: str | None = field(default=None, metadata=PATH)
    val_fraction: float = field(default=0.2, metadata=_range(0, 1, True, True))


@dataclass
class _TaskCommon:
    batch_size: int = field(default=64, metadata=_range(1))
    num_workers: int = field(default=0, metadata=_range(0))
    seed: int = field(default=0, metadata=_range(0))
    # null: the image size and normalisation the checkpoint was pre-trained with
    image_size: int | None = field(default=None, metadata=_range(8))
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class LinearTask(_TaskCommon):
    data: ClassificationData = field(default_factory=ClassificationData)
    c_values: list[float] | None = None  # null: the 45-value grid of arXiv:2011.13377
    max_iter: int = field(default=1000, metadata=_range(1))
    metric: Literal["top1", "mean_per_class"] = "top1"
    standardize: bool = False
    calibration_bins: int = field(default=15, metadata=_range(1))
    cache_features: bool = True


@dataclass
class FewshotTask(_TaskCommon):
    data: ClassificationData = field(default_factory=ClassificationData)
    way: int = field(default=5, metadata=_range(2))
    shot: int = field(default=5, metadata=_range(1))
    query: int = field(default=15, metadata=_range(1))
    episodes: int = field(default=600, metadata=_range(1))
    classifier: Literal["ncm", "logistic"] = "ncm"
    logistic_c: float = field(default=1.0, metadata=_range(0, lo_open=True))
    feature_norm: Literal["none", "l2"] = "none"
    splits: list[Literal["train", "val", "test"]] = field(
        default_factory=lambda: ["train", "val", "test"])
    episodes_file: str | None = field(default=None, metadata=PATH)
    cache_features: bool = True


@dataclass
class FinetuneTask(_TaskCommon):
    data: ClassificationData = field(default_factory=ClassificationData)
    steps: int = field(default=5000, metadata=_range(1))
    optimizer: Literal["sgd", "adam"] = "sgd"
    lrs: list[float] = field(default_factory=lambda: [0.1, 0.01, 0.001])
    weight_decays: list[float] = field(default_factory=lambda: [0.0, 1e-4])
    momentum: float = field(default=0.9, metadata=_range(0, 1))
    metric: Literal["top1", "mean_per_class"] = "top1"
    refit: bool = True


@dataclass
class DetectionData:
    # Each source: {format: coco, images: DIR, annotations: FILE.json} or
    # {format: voc, root: VOCdevkit/VOC2007, split: trainval}; train may list several.
    train: list[dict] | dict | None = None
    test: list[dict] | dict | None = None
    on_bad_box: Literal["skip", "error"] = "skip"


@dataclass
class DetectionTask:
    data: DetectionData = field(default_factory=DetectionData)
    batch_size: int = field(default=2, metadata=_range(1))
    num_workers: int = field(default=0, metadata=_range(0))
    seed: int = field(default=0, metadata=_range(0))
    mean: list[float] | None = None
    std: list[float] | None = None
    trainable_layers: int = field(default=1, metadata=_range(0, 5))
    images: int = field(default=288_000, metadata=_range(1))
    lr: float | None = field(default=None, metadata=_range(0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0, 1))
    weight_decay: float = field(default=1e-4, metadata=_range(0))
    warmup_images: int = field(default=200, metadata=_range(0))
    lr_steps: list[float] = field(default_factory=lambda: [2 / 3, 8 / 9])
    min_size: list[int] = field(default_factory=lambda: list(range(480, 801, 32)))
    max_size: int = field(default=1333, metadata=_range(1))
    score_threshold: float = field(default=0.05, metadata=_range(0, 1))
    detections_per_image: int = field(default=100, metadata=_range(1))
    hflip: bool = True


@dataclass
class InvarianceData:
    # Images measured: a folder (any tree of image files). null: the run's own test split
    # (a checkpoint inside a run directory only).
    images: str | None = field(default=None, metadata=PATH)
    # Images for the feature mean and covariance; null: the measured images themselves.
    reference: str | None = field(default=None, metadata=PATH)
    # Optional multi-view folders (object/view.png, as COIL-100 or ALOI) for invariance to
    # real changes of view or lighting.
    views: str | None = field(default=None, metadata=PATH)


@dataclass
class InvarianceTask:
    # Invariance to synthetic transformations (arXiv:2111.11398); `betaweighter invariance`.
    data: InvarianceData = field(default_factory=InvarianceData)
    protocol: Literal[PROTOCOLS] = "v2"  # type: ignore[valid-type]
    transforms: list[Literal[TRANSFORMS]] | None = None  # type: ignore[valid-type]
    k: int | None = field(default=None, metadata=_range(1))  # null: the paper's 256
    num_images: int = field(default=1000, metadata=_range(1))
    # auto (Ledoit-Wolf when the reference set is too small), none, ledoit_wolf, or [0, 1]
    shrinkage: Literal["auto", "none", "ledoit_wolf"] | float = "auto"
    batch_size: int = field(default=64, metadata=_range(1))
    seed: int = field(default=0, metadata=_range(0))
    # null: the checkpoint's training input; resize null = image_size x 256 / 224
    image_size: int | None = field(default=None, metadata=_range(8))
    resize: int | None = field(default=None, metadata=_range(8))
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class EvaluateSection:
    # The per-epoch model selection of a run: a linear probe on target_train -> target_val.
    every: int = field(default=1, metadata=_range(1))
    batch_size: int = field(default=256, metadata=_range(1))
    max_iter: int = field(default=1000, metadata=_range(1))
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0])
    # C values of the final test probe; null = the 45-value grid of arXiv:2011.13377
    final_c_grid: list[float] | None = None
    # Transfer tasks for `betaweighter evaluate RUN --task NAME`.
    linear: LinearTask = field(default_factory=LinearTask)
    fewshot: FewshotTask = field(default_factory=FewshotTask)
    finetune: FinetuneTask = field(default_factory=FinetuneTask)
    detection: DetectionTask = field(default_factory=DetectionTask)
    invariance: InvarianceTask = field(default_factory=InvarianceTask)


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


# --- YAML without duplicate keys ----------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    pass


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                              f"(first at line {seen[key] + 1}): keep one of them")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(text: str, where: str) -> Any:
    """Parse YAML strictly (no duplicate keys); any problem is a ConfigError naming `where`."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        detail = " ".join(str(e).split())
        raise ConfigError(f"{where} is not valid YAML: {detail}") from None


# --- type checking ------------------------------------------------------------------------
def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a finite number", bool: "true or false",
            str: "a string", dict: "a mapping", type(None): "null"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config key {key!r}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is not None:
            raise bad
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        return _number(value, key, bad)
    if tp in (str, dict):
        if not isinstance(value, tp):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _number(value: Any, key: str, bad: ConfigError) -> float:
    """A finite float from a number or from any string Python's float() reads."""
    if isinstance(value, bool):
        raise bad
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise bad from None
    if not isinstance(value, (int, float)):
        raise bad
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"config key {key!r}: must be a finite number, got {value!r}")
    return value


def _check_range(value: Any, f: dataclasses.Field, key: str) -> None:
    if "range" not in f.metadata or value is None:
        return
    lo, hi, lo_open, hi_open = f.metadata["range"]
    if (lo is not None and (value < lo or (lo_open and value == lo))) or (
            hi is not None and (value > hi or (hi_open and value == hi))):
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ConfigError(f"config key {key!r}: {value!r} is out of range "
                          f"{left}{lo_s}, {hi_s}{right}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix or '<root>'!r}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            where = f"section {prefix!r}" if prefix else "the top level"
            raise ConfigError(f"unknown config key {_join(prefix, str(k))!r}; allowed keys in "
                              f"{where}: " + ", ".join(fields))
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key, tp = _join(prefix, name), hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name], key)
        else:
            value = _coerce(data[name], tp, key)
            _check_range(value, f, key)
            kwargs[name] = value
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def path_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Dotted keys of every path-valued option (resolved against the config's folder)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += path_keys(hints[f.name], key)
        elif f.metadata.get("path"):
            keys.append(key)
    return keys


# --- public API -----------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.01"`` -> (["train", "lr"], 0.01); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value (e.g. train.lr=0.01)")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {text!r}: empty part in key {key!r}")
    return path, read_yaml(raw, f"the value of override {text!r}") if raw.strip() else None


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
    """Read a YAML config (or start from defaults / `base`), apply ``a.b=c`` overrides and
    validate everything. Raises ConfigError naming the offending key."""
    data: dict = {}
    if base is not None:
        data = yaml.safe_load(yaml.safe_dump(base))
    if path is not None:
        data = _merge(data, read_config_file(path))
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
        if ".".join(keys) in path_keys() and isinstance(value, str):
            node[keys[-1]] = str(Path(value).expanduser().resolve())
    cfg = _build(Config, data, "")
    _check_consistency(cfg)
    return cfg


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
    d = cfg.data
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
                          f"{cfg.train.milestones}")
    shrinkage = cfg.evaluate.invariance.shrinkage
    if isinstance(shrinkage, float) and not 0 <= shrinkage <= 1:
        raise ConfigError(f"config key 'evaluate.invariance.shrinkage': a number must be in "
                          f"[0, 1], got {shrinkage}")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.train.device):
        raise ConfigError(f"config key 'train.device': unknown device {cfg.train.device!r}; "
                          "use auto, cpu, cuda or cuda:N")


def dump_config(cfg: Config) -> str:
    """The config as YAML text (every key, resolved)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
