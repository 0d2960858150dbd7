"""A suite file: the models and the transfer tasks of one models x tasks table, read strictly.

*How Well Do Self-Supervised Models Transfer?* (Ericsson, Gouk and Hospedales,
arXiv:2011.13377) compares many pre-trained models on many downstream tasks in one table.
A suite YAML lists both::

    models:
      - {name: ours, path: runs/stl10-bdw}
      - {name: moco, path: moco_v2_800ep_pretrain.pth.tar, format: moco}
    tasks:
      - name: dtd
        linear:
          data: {dataset: DTD, root: data}
      - name: dtd-5way
        fewshot: {data: {dataset: DTD, root: data}, episodes: 600}
    output: suite-results      # optional; default <suite file name>-results beside it

A task has a `name` and one protocol section: the key is the protocol (an
``evaluate.<task>`` name: linear, fewshot, finetune, detection, ...) and its value is
exactly what that ``evaluate.<task>`` section of a config holds, checked by the same
schema. `headline` optionally names the number of its result that goes in the table
(``/``-separated, e.g. ``results/1%/voc07_AP50``). Every mistake is one `ConfigError`
naming the key (``tasks[1].linear.c_value``). Relative paths are relative to the suite
file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from betaweighter.errors import ConfigError
from betaweighter.experiment.config import EvaluateSection, load_config
from betaweighter.experiment.schema import build, read_yaml
from betaweighter.experiment.tasks import PATH

__all__ = ["PROTOCOLS", "Suite", "SuiteModel", "SuiteTask", "headline_of", "load_suite"]

#: Protocols a suite can run: the evaluate tasks with one headline number per result
#: (invariance measures a table of transformations, not a score).
PROTOCOLS = tuple(f.name for f in dataclasses.fields(EvaluateSection)
                  if dataclasses.is_dataclass(typing.get_type_hints(EvaluateSection)[f.name])
                  and f.name != "invariance")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_SOURCE_PATHS = ("images", "annotations", "root", "masks")  # inside {format: ...} sources


@dataclass
class SuiteModel:
    name: str = ""
    # a checkpoint file or a run directory (its best.pt, else last.pt)
    path: str = field(default="", metadata=PATH)
    # the key layout (betaweighter.load_backbone's `format`); null: detected from the keys
    format: str | None = None
    # the architecture, where the file does not say (torchvision or timm name)
    arch: str | None = None


@dataclass
class _Top:
    models: list[dict] = field(default_factory=list)
    tasks: list[dict] = field(default_factory=list)
    output: str | None = field(default=None, metadata=PATH)
    device: str | None = None  # null: the GPU when there is one


@dataclass
class SuiteTask:
    """One column of the table: a protocol, its resolved options, the headline number."""

    name: str
    protocol: str
    headline: str
    options: dict[str, Any]

    def key(self) -> str:
        """A digest of the resolved definition: a cell is recomputed when it changes."""
        text = json.dumps({"protocol": self.protocol, "options": self.options},
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Suite:
    path: Path
    models: list[SuiteModel]
    tasks: list[SuiteTask]
    output: Path
    device: str | None


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file (see the module docstring)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"suite file {str(file)!r} does not exist")
    loaded = read_yaml(file.read_text(encoding="utf-8"), f"suite file {str(file)!r}")
    if not isinstance(loaded, dict):
        raise ConfigError(f"suite file {str(file)!r} must hold a mapping with 'models' and "
                          "'tasks'")
    base = file.resolve().parent
    top = build(_Top, loaded, "")
    for key in ("models", "tasks"):
        if not getattr(top, key):
            raise ConfigError(f"suite key {key!r}: list at least one (see `betaweighter "
                              "suite --help`)")
    models = [_model(m, i, base) for i, m in enumerate(top.models)]
    tasks = [_task(t, i, base) for i, t in enumerate(top.tasks)]
    for kind, items in (("models", models), ("tasks", tasks)):
        names = [x.name for x in items]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"suite key {kind!r}: the names {dup} are used twice; give each "
                              "a name of its own")
    output = Path(_resolve(top.output, base)) if top.output else base / f"{file.stem}-results"
    return Suite(file.resolve(), models, tasks, output, top.device)


def _model(data: Any, i: int, base: Path) -> SuiteModel:
    key = f"models[{i}]"
    model = build(SuiteModel, data, key)
    _check_name(model.name, key)
    if not model.path:
        raise ConfigError(f"suite key '{key}.path' is required: a checkpoint file or a run "
                          "directory")
    model.path = _resolve(model.path, base)
    if model.format is not None:
        try:
            from betaweighter.published import ALIASES, FORMATS
        except ImportError:  # a library without published formats: load_backbone decides
            return model
        if model.format not in (*FORMATS, *ALIASES):
            raise ConfigError(f"suite key '{key}.format': unknown format {model.format!r}; "
                              "choose one of " + ", ".join([*FORMATS, *ALIASES]))
    return model


def _task(data: Any, i: int, base: Path) -> SuiteTask:
    key = f"tasks[{i}]"
    allowed = f"name, headline, and one of {', '.join(PROTOCOLS)} (the protocol's options)"
    if not isinstance(data, dict):
        raise ConfigError(f"suite key {key!r}: expected a mapping of {allowed}, got {data!r}")
    unknown = [str(k) for k in data if k not in ("name", "headline", *PROTOCOLS)]
    if unknown:
        raise ConfigError(f"unknown config key '{key}.{unknown[0]}'; allowed keys in section "
                          f"{key!r}: {allowed}")
    chosen = [k for k in data if k in PROTOCOLS]
    if len(chosen) != 1:
        raise ConfigError(f"suite key {key!r}: give exactly one protocol section (one of "
                          f"{', '.join(PROTOCOLS)}), got {chosen or 'none'}")
    protocol = chosen[0]
    name = data.get("name")
    _check_name(name, key)
    assert isinstance(name, str)  # _check_name refused anything else
    headline = data.get("headline")
    if headline is not None and not isinstance(headline, str):
        raise ConfigError(f"suite key '{key}.headline': expected a string, got {headline!r}")
    section = {} if data[protocol] is None else data[protocol]
    options_cls = typing.get_type_hints(EvaluateSection)[protocol]
    where = f"{key}.{protocol}"
    if not isinstance(section, dict):
        raise ConfigError(f"config key {where!r}: expected a mapping, got {section!r}")
    options = dataclasses.asdict(build(options_cls, _resolve_paths(section, options_cls, base),
                                       where))
    _check_consistency(protocol, options, where)
    headline = headline or headline_of(protocol, options)
    if headline is None:
        raise ConfigError(f"suite key '{key}.headline' is required for protocol {protocol!r}: "
                          "the /-separated key of the result that goes in the table")
    return SuiteTask(name, protocol, headline, options)


def headline_of(protocol: str, options: dict[str, Any]) -> str | None:
    """The number a task contributes to the table, by default: the test accuracy the
    protocol selects on (linear, finetune), few-shot accuracy, VOC07 AP50 for detection
    (the number the paper quotes; for label-scarce training at the first fraction, for
    few-shot detection the novel classes' AP50 at the first K), mIoU for segmentation, mask AP
    for instance segmentation."""
    if protocol in ("linear", "finetune"):
        return "top1" if options.get("metric") == "top1" else "mean_per_class_accuracy"
    if protocol == "fewshot":
        return "accuracy"
    if protocol == "detection":
        if options["protocol"] == "label_scarce":
            return f"results/{100 * options['fractions'][0]:g}%/voc07_AP50"
        if options["protocol"] == "few_shot":
            return f"results/{options['few_shot']['shots'][0]}-shot/nAP50"
        return "voc07_AP50"
    if protocol == "segmentation":
        return "mIoU"
    if protocol == "instance_segmentation":
        return "mask_AP"
    return None


def _check_name(name: Any, key: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"suite key '{key}.name': a name of letters, digits and . _ + - "
                          f"(it names the cell files), got {name!r}")


def _check_consistency(protocol: str, options: dict[str, Any], key: str) -> None:
    """The checks the config schema makes across keys, with this task's key in the
    message."""
    try:
        load_config(base={"evaluate": {protocol: options}})
    except ConfigError as e:
        raise ConfigError(str(e).replace(f"evaluate.{protocol}", key)) from None


def _resolve(value: str, base: Path) -> str:
    return str((base / Path(value).expanduser()).resolve())


def _resolve_paths(data: dict, cls: type, base: Path) -> dict:
    """A copy of a task mapping with its relative paths made absolute: the fields marked
    PATH, and the paths inside {format: ...} source mappings (detection, segmentation)."""
    out = dict(data)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = out.get(f.name)
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(value, dict):
            out[f.name] = _resolve_paths(value, hints[f.name], base)
        elif f.metadata.get("path") and isinstance(value, str) and value:
            out[f.name] = _resolve(value, base)
        elif isinstance(value, (dict, list)):
            out[f.name] = [_source(v, base) for v in value] if isinstance(value, list) \
                else _source(value, base)
    return out


def _source(value: Any, base: Path) -> Any:
    if not isinstance(value, dict) or "format" not in value:
        return value
    return {k: _resolve(v, base) if k in _SOURCE_PATHS and isinstance(v, str) and v else v
            for k, v in value.items()}
