"""The experiment config: YAML parsed into typed dataclasses, strictly.

An unknown key, a duplicate key, a wrong type or an out-of-range value fails before any
work starts, with the dotted key path, the offending value and what is allowed. The same
checks apply to ``--set a.b=c`` overrides from the command line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

METHODS = ("bdw", "dw", "l2rw", "nn", "weightnet", "heuristic", "random", "rotnet")


class ConfigError(ValueError):
    """A config problem, naming the dotted key and saying what is allowed."""


def _range(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> dict:
    return {"range": (lo, hi, lo_open)}


@dataclass
class ExperimentSection:
    name: str = "experiment"
    seed: int = 0
    output_root: str = "runs"


@dataclass
class DataSection:
    # demo: the embedded set (no files); stl10: STL-10 binaries under `root`; decathlon:
    # Visual Decathlon under `root` with `target` as the labelled domain; folders: your own
    # ImageFolder trees (`pool_root`, `target_root`).
    name: Literal["demo", "stl10", "decathlon", "folders"] = "demo"
    root: str | None = None
    target: str | None = None
    pool_root: str | None = None
    target_root: str | None = None
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
    name: Literal["rotation"] = "rotation"


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
    engine: Literal["func", "higher"] = "func"
    meta_gradient: Literal["auto", "forward", "finite_difference", "double_backward"] = "auto"
    every: int = field(default=1, metadata=_range(1))
    inner_steps: int = field(default=1, metadata=_range(1))
    normalise: bool = False
    weight_lr: float = field(default=1.0, metadata=_range(0, lo_open=True))
    weight_optimizer: Literal["sgd", "adam"] = "sgd"
    weight_momentum: float = field(default=0.9, metadata=_range(0, 1))
    dense_weight_updates: bool = False


@dataclass
class PruningSection:
    enabled: bool = False
    rule: Literal["cdf", "threshold", "quantile", "random"] = "cdf"
    epsilon: float = field(default=0.1, metadata=_range(0, 1))
    delta: float = field(default=0.5, metadata=_range(0, 1))
    quantile: float = field(default=0.1, metadata=_range(0, 1))
    # rule=random prunes as many as this rule would, chosen at random (the control); a list
    # of per-epoch counts (e.g. copied from another run's metrics.csv) matches that run.
    control: Literal["cdf", "threshold", "quantile"] | list[int] = "cdf"
    warmup: int = field(default=0, metadata=_range(0))
    every: int = field(default=1, metadata=_range(1))
    max_fraction: float = field(default=1.0, metadata=_range(0, 1))
    soft: bool = False
    skip_prob: float = field(default=0.5, metadata=_range(0, 1))
    anneal_epochs: int | None = field(default=None, metadata=_range(0))


@dataclass
class TrainSection:
    epochs: int = field(default=35, metadata=_range(1))
    batch_size: int = field(default=32, metadata=_range(1))
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = field(default=0.1, metadata=_range(0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0, 1))
    weight_decay: float = field(default=1e-4, metadata=_range(0))
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [15, 25])
    gamma: float = field(default=0.1, metadata=_range(0, 1, lo_open=True))
    max_steps_per_epoch: int | None = field(default=None, metadata=_range(1))
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class EvaluateSection:
    every: int = field(default=1, metadata=_range(1))
    batch_size: int = field(default=256, metadata=_range(1))
    max_iter: int = field(default=1000, metadata=_range(1))
    # C values of the per-epoch model-selection probe (few, it runs every epoch)
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0])
    # C values of the final test probe; null = the 45-value grid of Ericsson et al. 2021
    final_c_grid: list[float] | None = None


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
            raise ConfigError(
                f"duplicate key {key!r} at line {key_node.start_mark.line + 1} (first at line "
                f"{seen[key] + 1}): keep one of them"
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


# --- type checking ------------------------------------------------------------------------
def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            dict: "a mapping", type(None): "null"}.get(tp, str(tp))


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
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _check_range(value: Any, f: dataclasses.Field, key: str) -> None:
    if "range" not in f.metadata or value is None:
        return
    lo, hi, lo_open = f.metadata["range"]
    if (lo is not None and (value < lo or (lo_open and value == lo))) or (
            hi is not None and value > hi):
        left = "(" if lo_open else "["
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ConfigError(f"config key {key!r}: {value!r} is out of range {left}{lo_s}, {hi_s}]")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix or '<root>'!r}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            where = f"section {prefix!r}" if prefix else "the top level"
            raise ConfigError(
                f"unknown config key {_join(prefix, str(k))!r}; allowed keys in {where}: "
                + ", ".join(fields)
            )
    kwargs = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name not in data:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name], key)
        else:
            value = _coerce(data[name], tp, key)
            _check_range(value, f, key)
            kwargs[name] = value
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# --- public API -----------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.01"`` -> (["train", "lr"], 0.01); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value (e.g. train.lr=0.01)")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {text!r}: empty part in key {key!r}")
    return path, yaml.load(raw, Loader=_StrictLoader) if raw.strip() else None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> Config:
    """Read a YAML config (or start from defaults / `base`), apply ``a.b=c`` overrides and
    validate everything. Raises ConfigError naming the offending key."""
    data: dict = {}
    if base is not None:
        data = yaml.safe_load(yaml.safe_dump(base))
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.load(p.read_text(), Loader=_StrictLoader)
        except ConfigError as e:
            raise ConfigError(f"config file {str(p)!r}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
        data = _merge(data, loaded)
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    cfg = _build(Config, data, "")
    _check_consistency(cfg)
    return cfg


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check_consistency(cfg: Config) -> None:
    d = cfg.data
    if d.name == "decathlon" and not d.target:
        raise ConfigError("config key 'data.target': the Visual Decathlon target domain is "
                          "required (e.g. data.target=dtd)")
    if d.name in ("stl10", "decathlon") and not d.root:
        raise ConfigError(f"config key 'data.root': {d.name} needs the dataset's root folder")
    if d.name == "folders" and not (d.pool_root and d.target_root):
        raise ConfigError("config keys 'data.pool_root' and 'data.target_root' are required "
                          "for data.name=folders")
    if sorted(cfg.train.milestones) != cfg.train.milestones:
        raise ConfigError(f"config key 'train.milestones': must be increasing, got "
                          f"{cfg.train.milestones}")


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
