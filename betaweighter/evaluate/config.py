"""The configuration of `betaweighter.evaluate.evaluate`: defaults per task and checks.

A config is a dict (or a YAML/JSON file holding one) with a ``data`` entry and optional
task settings. Every key is checked: an unknown key or a value of the wrong type raises
`ConfigError` naming the key and listing the known ones. Relative paths are resolved
against the config file's folder (or the working directory for a dict).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from betaweighter.evaluate.image_folders import IMAGENET_MEAN, IMAGENET_STD

TASKS = ("linear", "fewshot", "finetune", "detection")

_COMMON: dict[str, Any] = {
    "data": None, "batch_size": 64, "num_workers": 4, "device": None, "seed": 0,
    "image_size": 224, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {**_COMMON, "c_values": None, "max_iter": 1000, "metric": "top1",
               "standardize": False, "calibration_bins": 15, "cache_features": True},
    "fewshot": {**_COMMON, "way": 5, "shot": 5, "query": 15, "episodes": 600,
                "classifier": "ncm", "logistic_c": 1.0, "feature_norm": "none",
                "splits": ["train", "val", "test"], "episodes_file": None,
                "cache_features": True},
    "finetune": {**_COMMON, "steps": 5000, "optimizer": "sgd", "lrs": [0.1, 0.01, 0.001],
                 "weight_decays": [0.0, 1e-4], "momentum": 0.9, "metric": "top1",
                 "refit": True},
    "detection": {"data": None, "batch_size": 2, "num_workers": 4, "device": None, "seed": 0,
                  "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                  "trainable_layers": 1, "images": 288_000, "lr": None, "momentum": 0.9,
                  "weight_decay": 1e-4, "warmup_images": 200, "lr_steps": [2 / 3, 8 / 9],
                  "min_size": list(range(480, 801, 32)), "max_size": 1333,
                  "score_threshold": 0.05, "detections_per_image": 100, "hflip": True},
}
CLASSIFICATION_DATA = {"train": None, "val": None, "test": None, "val_fraction": 0.2}
DETECTION_DATA = {"train": None, "test": None, "on_bad_box": "skip"}
DETECTION_SOURCES = {"coco": {"format": None, "images": None, "annotations": None},
                     "voc": {"format": None, "root": None, "split": "trainval"}}
CHOICES = {"metric": ("top1", "mean_per_class"), "classifier": ("ncm", "logistic"),
           "feature_norm": ("none", "l2"), "optimizer": ("sgd", "adam"),
           "on_bad_box": ("skip", "error")}


class ConfigError(ValueError):
    """A bad evaluation config: unknown key, wrong type, missing entry."""


def resolve_config(task: str, config: Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    """Defaults of `task` updated with `config`, checked, with absolute data paths."""
    if task not in TASKS:
        raise ConfigError(f"unknown evaluation task {task!r}; choose one of {TASKS}")
    base = Path.cwd()
    if isinstance(config, (str, Path)):
        base = Path(config).resolve().parent
        config = load_config_file(config)
    config = dict(config or {})
    out = _merge(DEFAULTS[task], config, f"the {task} evaluation config")
    if out["data"] is None:
        raise ConfigError(_data_help(task))
    if out.get("episodes_file") is not None:
        out["episodes_file"] = _path(out["episodes_file"], "episodes_file", base)
    if task == "detection":
        out["data"] = _detection_data(out["data"], base)
    else:
        out["data"] = _classification_data(out["data"], base, task)
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file holding a mapping."""
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read evaluation config {path}: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"evaluation config {path} must hold a mapping of keys to values")
    return data


def _merge(defaults: Mapping[str, Any], given: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(dict(defaults))
    for key, value in given.items():
        if key not in defaults:
            raise ConfigError(f"unknown key {key!r} in {where}; known keys: "
                              f"{', '.join(sorted(defaults))}")
        _check_type(key, value, defaults[key], where)
        out[key] = copy.deepcopy(value)
    return out


def _check_type(key: str, value: Any, default: Any, where: str) -> None:
    if value is None or default is None:
        ok = True
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{key!r} in {where} must be a {type(default).__name__} (like the "
                          f"default {default!r}), got {value!r}")
    if key in CHOICES and value is not None and value not in CHOICES[key]:
        raise ConfigError(f"{key!r} in {where} must be one of {CHOICES[key]}, got {value!r}")


def _path(value: Any, key: str, base: Path) -> str:
    if not isinstance(value, (str, Path)):
        raise ConfigError(f"{key} must be a path, got {value!r}")
    return str((base / Path(value).expanduser()).resolve())


def _classification_data(data: Any, base: Path, task: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(_data_help(task))
    out = _merge(CLASSIFICATION_DATA, data, "'data'")
    required = ("train", "test") if task != "fewshot" else ()
    for key in required:
        if out[key] is None:
            raise ConfigError(f"'data.{key}' is required for the {task} task. {_data_help(task)}")
    if task == "fewshot" and all(out[k] is None for k in ("train", "val", "test")):
        raise ConfigError(_data_help(task))
    for key in ("train", "val", "test"):
        if out[key] is not None:
            out[key] = _path(out[key], f"data.{key}", base)
    return out


def _detection_data(data: Any, base: Path) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(_data_help("detection"))
    out = _merge(DETECTION_DATA, data, "'data'")
    for split in ("train", "test"):
        if out[split] is None:
            raise ConfigError(f"'data.{split}' is required. {_data_help('detection')}")
        sources = out[split] if isinstance(out[split], list) else [out[split]]
        out[split] = [_source(s, f"data.{split}", base) for s in sources]
    return out


def _source(source: Any, key: str, base: Path) -> dict[str, Any]:
    fmt = source.get("format") if isinstance(source, Mapping) else None
    if fmt not in DETECTION_SOURCES:
        raise ConfigError(f"{key} must be a mapping with 'format': 'coco' or 'voc', got "
                          f"{source!r}. {_data_help('detection')}")
    out = _merge(DETECTION_SOURCES[fmt], source, f"'{key}' ({fmt})")
    for name in ("images", "annotations", "root"):
        if name in out:
            if out[name] is None:
                raise ConfigError(f"'{key}.{name}' is required for a {fmt} source")
            out[name] = _path(out[name], f"{key}.{name}", base)
    return out


def _data_help(task: str) -> str:
    if task == "detection":
        return ("The detection config needs 'data': {'train': SOURCE or [SOURCE, ...], "
                "'test': SOURCE}, where SOURCE is {'format': 'coco', 'images': DIR, "
                "'annotations': FILE.json} or {'format': 'voc', 'root': VOCdevkit/VOC2007, "
                "'split': 'trainval'}.")
    return (f"The {task} config needs 'data': {{'train': DIR, 'val': DIR (optional), "
            "'test': DIR}, each a torchvision ImageFolder root (one sub-folder per class).")
