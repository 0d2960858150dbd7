"""Strict typed YAML: mappings parsed into dataclasses, every mistake a ConfigError.

`read_yaml` refuses duplicate keys; `build` checks every key against the dataclass's fields
(unknown keys listed with the allowed ones), every value against its type hint (numbers in
any form ``float()`` reads, and finite), and against the field's range metadata, naming the
dotted key of anything wrong.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union

import yaml

from betaweighter.errors import ConfigError

__all__ = ["build", "join", "read_yaml"]


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


def build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix or '<root>'!r}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            where = f"section {prefix!r}" if prefix else "the top level"
            raise ConfigError(f"unknown config key {join(prefix, str(k))!r}; allowed keys in "
                              f"{where}: " + ", ".join(fields))
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key, tp = join(prefix, name), hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, data[name], key)
        else:
            value = _coerce(data[name], tp, key)
            _check_range(value, f, key)
            kwargs[name] = value
    return cls(**kwargs)


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
