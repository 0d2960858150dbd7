"""Options declared once: a dataclass field that carries its default, range and help line.

The pruning rules and `PruningSchedule` declare each option with `option`; their
``__post_init__`` checks every field against its declared `Range` (`check_fields`), and the
config schema copies default, range and help from the same field
(`betaweighter.experiment.mirror.mirror`), so a default or a range is written in one place.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from betaweighter.data.options import Range

__all__ = ["check_fields", "option"]


def option(default: Any, allowed: Range | None = None, help: str = "") -> Any:
    """A dataclass field with `default`, the `allowed` range of its numbers (None: not a
    number, or not checked) and a one-line `help` (what the config reference shows)."""
    return dataclasses.field(default=default, metadata={"range": allowed, "help": help})


def check_fields(obj: Any, skip: tuple[str, ...] = ()) -> None:
    """Check every declared field of the frozen dataclass `obj` (but those in `skip`, which
    check themselves) against its range, and store it as a plain Python value (int for an
    integer range, float for another range, bool for a flag); ValueError naming the field
    otherwise. None is "not given"."""
    for f in dataclasses.fields(obj):
        if "range" not in f.metadata or f.name in skip:
            continue
        value, allowed = getattr(obj, f.name), f.metadata["range"]
        if isinstance(value, np.generic):
            value = value.item()
        if value is None:
            continue
        if allowed is None:
            if isinstance(f.default, bool):
                value = bool(value)
        else:
            found = allowed.problem(value)
            if found is not None:
                raise ValueError(f"{type(obj).__name__}: {f.name}: {found}")
            value = int(value) if allowed.integer else float(value)
        object.__setattr__(obj, f.name, value)
