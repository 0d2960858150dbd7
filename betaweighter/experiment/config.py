"""Reading a config: YAML parsed into the typed sections of `sections`, strictly.

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
from pathlib import Path
from typing import Any

import yaml

from betaweighter.data.options import check_options
from betaweighter.data.sources import DATA_SOURCES
from betaweighter.errors import ConfigError, quote
from betaweighter.experiment.schema import build, join, read_yaml
from betaweighter.experiment.sections import (
    Config,
    DataSection,
    EvaluateSection,
    ExperimentSection,
    MetaSection,
    ModelSection,
    PretextSection,
    PruningSection,
    TrainSection,
    WeightsSection,
)
from betaweighter.experiment.shipped import config_file

__all__ = ["Config", "ConfigError", "DataSection", "EvaluateSection", "ExperimentSection",
           "MetaSection", "ModelSection", "PretextSection", "PruningSection", "TrainSection",
           "WeightsSection", "dump_config", "load_config", "parse_override"]

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
        node: Any = data
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
    for key, hint in DATA_SOURCES.get(d.name).meta.get("required", {}).items():
        if not getattr(d, key):
            raise ConfigError(f"config key 'data.{key}': data {d.name} needs {hint}")
    if sorted(cfg.train.milestones) != cfg.train.milestones:
        raise ConfigError(f"config key 'train.milestones': must be increasing, got "
                          f"{quote(cfg.train.milestones)}")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.train.device):
        raise ConfigError(f"config key 'train.device': unknown device "
                          f"{quote(cfg.train.device)}; use auto, cpu, cuda or cuda:N")


def _check_data_options(d: DataSection) -> None:
    """``data.options`` against the ranges its dataset builder declares (`ranged`), so a
    value out of range stops here rather than after a directory is made or an epoch run."""
    builder = DATA_SOURCES.get(d.name).obj
    check_options(builder, d.options, "data.options")


def dump_config(cfg: Config) -> str:
    """The config as YAML text (every key, resolved)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
