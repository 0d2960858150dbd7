"""Strict typed YAML: mappings parsed into dataclasses, every mistake a ConfigError.

`read_yaml` refuses duplicate keys; `build` checks every key against the dataclass's fields
(unknown keys listed with the allowed ones), every value against its type hint (numbers in
any form ``float()`` reads, and finite), and against the field's range metadata (for a
list: every item, and its least length), naming the dotted key of anything wrong. What a
message quotes of a value is cut short (`betaweighter.errors.quote`), and a document nested
too deeply or expanding to too many values through its aliases is refused as it is read.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, cast

import yaml

from betaweighter.data.options import Range
from betaweighter.errors import ConfigError, quote

__all__ = ["MAX_DEPTH", "MAX_VALUES", "build", "join", "read_yaml"]

#: The deepest nesting and the most values (aliases expanded) a YAML document may hold: far
#: beyond any config, far below what exhausts the stack or the memory.
MAX_DEPTH = 50
MAX_VALUES = 100_000


# --- YAML without duplicate keys ----------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    pass


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"duplicate key {quote(key)} at line {key_node.start_mark.line + 1} "
                              f"(first at line {seen[key] + 1}): keep one of them")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(text: str, where: str) -> Any:
    """Parse YAML strictly (no duplicate keys); any problem is a ConfigError naming `where`."""
    try:
        loaded = yaml.load(text, Loader=_StrictLoader)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        detail = " ".join(str(e).split())
        raise ConfigError(f"{where} is not valid YAML: {detail}") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to read (at most {MAX_DEPTH} "
                          "levels)") from None
    _check_size(loaded, where)
    return loaded


def _check_size(value: Any, where: str) -> None:
    """Refuse a document deeper than MAX_DEPTH or holding more than MAX_VALUES values once
    its aliases are expanded (a YAML alias bomb), walking without recursion and stopping
    at the limit, so neither costs more than the limit."""
    stack, count = [(value, 1)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(f"{where} holds more than {MAX_VALUES} values once its YAML "
                              "aliases (*name) are expanded: write the values out, or use "
                              "fewer aliases")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where} is nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


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
    bad = _Bad(key, tp, value)
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


class _Bad(ConfigError):
    """A wrong type: its message (the expected type, the value quoted) is only made when
    it is shown, since most are caught while a union tries its members."""

    def __init__(self, key: str, tp: Any, value: Any) -> None:
        super().__init__(key)
        self.key, self.tp, self.value = key, tp, value

    def __str__(self) -> str:
        return (f"config key {self.key!r}: expected {_describe(self.tp)}, got "
                f"{quote(self.value)}")


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
        raise ConfigError(f"config key {key!r}: must be a finite number, got {quote(value)}")
    return value


def _check_range(value: Any, f: dataclasses.Field, key: str) -> None:
    if "registry" in f.metadata and isinstance(value, str):
        f.metadata["registry"].get(value)  # a registered name, else one line listing them
    if "range" not in f.metadata or value is None or isinstance(value, str):
        return  # null, or a named choice of a union (pruning.control: cdf)
    lo, hi, lo_open, hi_open = f.metadata["range"]  # as tasks.span writes it
    allowed = Range(lo, hi, lo_open, hi_open, min_items=f.metadata.get("min_items", 0))
    found = allowed.problems(value, key)
    if found:
        raise ConfigError(f"config key {found[0][0]!r}: {found[0][1]}")


def build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix or '<root>'!r}: expected a mapping, got "
                          f"{quote(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            where = f"section {prefix!r}" if prefix else "the top level"
            raise ConfigError(f"unknown config key {quote(join(prefix, str(k)))}; allowed keys in "
                              f"{where}: " + ", ".join(fields))
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key, tp = join(prefix, name), hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(cast(type, tp), data[name], key)  # a type hint: a class
        else:
            value = _coerce(data[name], tp, key)
            _check_range(value, f, key)
            kwargs[name] = value
    return cls(**kwargs)


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
