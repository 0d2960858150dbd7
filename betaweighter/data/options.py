"""Allowed ranges of numbers, declared once and checked where a value arrives.

A dataset builder declares the range of each numeric option with `ranged`; the builder
checks its arguments with that declaration when it is called from Python, and the config
reader checks ``data.options`` against the same declaration (`check_options`) before any
run directory is made, so a value out of range is one error naming its key, never a crash
after an epoch. The config schema checks its own fields with `Range` as well.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from betaweighter.errors import ConfigError, quote

__all__ = ["MAX_SEED", "SEED", "Range", "check_options", "integer", "ranged"]

#: The largest seed: every generator the library seeds (numpy's legacy RandomState,
#: scikit-learn's random_state) takes seeds below 2**32.
MAX_SEED = 2**32 - 1

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Range:
    """The allowed values of a number: ``lo``/``hi`` (None: unbounded), each end closed
    unless `lo_open`/`hi_open`; `integer` refuses non-integers. For a list, every item
    is checked and at least `min_items` are required."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    min_items: int = 0

    def describe(self) -> str:
        left = "(" if self.lo_open or self.lo is None else "["
        right = ")" if self.hi_open or self.hi is None else "]"
        lo = "-inf" if self.lo is None else self.lo
        hi = "inf" if self.hi is None else self.hi
        return f"{left}{lo}, {hi}{right}"

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` (one number; None when it is allowed)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected {'an integer' if self.integer else 'a number'}, got {quote(value)}"
        if self.integer and not isinstance(value, int):
            return f"expected an integer, got {quote(value)}"
        if not math.isfinite(value):
            return f"must be a finite number, got {quote(value)}"
        lo, hi = self.lo, self.hi
        if (lo is not None and (value < lo or (self.lo_open and value == lo))) or (
                hi is not None and (value > hi or (self.hi_open and value == hi))):
            return f"{quote(value)} is out of range {self.describe()}"
        return None

    def problems(self, value: Any, key: str) -> list[tuple[str, str]]:
        """(key, problem) for `value`, a number or a list of numbers (items as key[i])."""
        if not isinstance(value, list):
            found = self.problem(value)
            return [] if found is None else [(key, found)]
        if len(value) < self.min_items:
            return [(key, f"needs at least {self.min_items} value"
                          f"{'s' if self.min_items > 1 else ''}, got {quote(value)}")]
        return [(f"{key}[{i}]", p) for i, v in enumerate(value)
                if (p := self.problem(v)) is not None]


def integer(lo: int | None = None, hi: int | None = None) -> Range:
    """The integers in [lo, hi] (a count, a size, a seed)."""
    return Range(lo, hi, integer=True)


#: any seed
SEED = integer(0, MAX_SEED)


def ranged(**ranges: Range) -> Callable[[F], F]:
    """Declare the ranges of a function's numeric arguments: a call with a value out of
    range raises ValueError naming the argument, and ``fn.ranges`` exposes the declaration
    to `check_options`. None stands for "not given" and is not checked."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        unknown = set(ranges) - set(signature.parameters)
        if unknown:
            raise TypeError(f"{fn.__qualname__} has no arguments {sorted(unknown)}")

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            for name, allowed in ranges.items():
                value = bound.arguments[name]
                if value is not None:
                    found = allowed.problems(value, name)
                    if found:
                        raise ValueError(f"{fn.__name__}: {found[0][0]}: {found[0][1]}")
            return fn(*args, **kwargs)

        checked.ranges = dict(ranges)  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return decorate


def check_options(fn: Callable[..., Any], options: Mapping[str, Any], key: str) -> None:
    """Check `options` (keyword arguments for `fn`, as a config gives them) against the
    ranges `fn` declared with `ranged`; raises ConfigError naming ``key.<option>``."""
    declared: Mapping[str, Range] = getattr(fn, "ranges", {})
    for name, value in options.items():
        if name in declared and value is not None:
            found = declared[name].problems(value, f"{key}.{name}")
            if found:
                raise ConfigError(f"config key {found[0][0]!r}: {found[0][1]}")
