"""Config fields that copy a component's own declaration, so a default lives in one place.

A component declares each option once: a pruning rule or `PruningSchedule` as a dataclass
field (default, `Range`, help line), a class such as `WeightOptimizer` by its constructor's
signature (the default) and its ``ranges`` mapping. `mirror` and `mirror_arg` build the
config schema's field from that declaration, in the form the schema and the config
reference read (``span`` metadata, ``help``); tests/experiment/test_defaults_in_step.py
checks that every mirrored key still agrees with its source.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from betaweighter.data.options import Range
from betaweighter.experiment.tasks import span

__all__ = ["mirror", "mirror_arg", "span_of"]


def span_of(allowed: Range | None) -> dict[str, Any]:
    """The schema's range metadata for `allowed` (none for None); an integer range's
    integrality is the field's type hint."""
    if allowed is None:
        return {}
    return span(allowed.lo, allowed.hi, allowed.lo_open, allowed.hi_open, allowed.min_items)


def mirror(cls: type, name: str, **metadata: Any) -> Any:
    """A config field with the default, range and help line of field `name` of the
    dataclass `cls` (e.g. ``mirror(CDFRule, "epsilon")``); `metadata` adds keys (a
    ``registry``)."""
    (f,) = [f for f in dataclasses.fields(cls) if f.name == name]
    meta = {**span_of(f.metadata.get("range")), **metadata}
    if f.metadata.get("help"):
        meta["help"] = f.metadata["help"]
    return dataclasses.field(default=f.default, metadata=meta)


def mirror_arg(component: Any, name: str, **metadata: Any) -> Any:
    """A config field with the default of argument `name` of `component` (a class: its
    constructor) and the range it declares in ``component.ranges`` (if any)."""
    param = inspect.signature(component).parameters[name]
    if param.default is inspect.Parameter.empty:
        raise TypeError(f"{component.__qualname__}({name}) has no default to mirror")
    allowed = getattr(component, "ranges", {}).get(name)
    return dataclasses.field(default=param.default, metadata={**span_of(allowed), **metadata})
