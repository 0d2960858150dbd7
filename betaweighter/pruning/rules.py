"""The pruning rules: which candidates an end-of-epoch decision prunes, most prunable first.

Each rule is a small frozen dataclass whose fields are its options, each declared once
with its default, range and help line (`option`); it is registered by name in
`PRUNING_RULES`, the names ``pruning.rule`` accepts in a config. A rule of your own
subclasses `PruningRule` (or `MatchedRule`), implements `PruningRule.ranked` and is
decorated with ``@register_pruning_rule("name")``; list its module in
``experiment.imports`` for YAML configs to find it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor

from betaweighter.data.options import Range, integer
from betaweighter.data.sampler import RANDOM_RULE_STREAM, epoch_rng
from betaweighter.errors import ConfigError
from betaweighter.pruning.declare import check_fields, option
from betaweighter.pruning.schedule import PruningSchedule
from betaweighter.registry import Registry
from betaweighter.weights.base import InstanceWeights

__all__ = ["CONTROL_RULES", "PRUNING_RULES", "BudgetRule", "CDFRule", "Candidates",
           "LowestRule", "MatchedRule", "PruningRule", "QuantileRule", "RandomRule",
           "ThresholdRule", "build_rule", "register_pruning_rule", "rule_options"]

#: Every pruning rule by its ``pruning.rule`` name.
PRUNING_RULES = Registry("pruning rule", "pruning.rule", decorator="register_pruning_rule")

R = TypeVar("R", bound=type)

#: epsilon is shared by the CDF and the threshold rule: declared here, once
_EPSILON = (0.1, Range(0, 1), "the weight below which an instance counts as unhelpful")


def register_pruning_rule(name: str, **meta: Any) -> Callable[[R], R]:
    """A class decorator registering a `PruningRule` under `name` (its ``pruning.rule``
    value, saved with the scheduler's state)."""

    def decorate(cls: R) -> R:
        cls.name = name  # type: ignore[attr-defined]
        return PRUNING_RULES.register(name, **meta)(cls)

    return decorate


@dataclass(frozen=True)
class Candidates:
    """What a decision is made on: the sorted indices a rule may prune (the kept
    instances; in soft mode, all), the `budget` it may prune at most, and where it is."""

    weights: InstanceWeights
    indices: np.ndarray
    budget: int
    num_instances: int
    epoch: int  # the epoch that just ended, counted from 1
    seed: int

    def mean(self) -> np.ndarray:
        """The candidates' mean weights."""
        return _numpy(self.weights.mean(torch.from_numpy(self.indices)))

    def cdf(self, x: float) -> np.ndarray:
        """P(w_i <= x) for each candidate."""
        return _numpy(self.weights.cdf(x, torch.from_numpy(self.indices)))

    def by_mean(self) -> np.ndarray:
        """The candidates, lowest mean weight first (ties broken by index)."""
        return self.indices[np.lexsort((self.indices, self.mean()))]


class PruningRule:
    """Base of the rules. A subclass is a frozen dataclass of its options; `ranked` says
    which candidates it would prune, most prunable first, and `choose` takes the decision
    within the budget."""

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self)

    def ranked(self, c: Candidates) -> np.ndarray:
        """The candidates this rule would prune now, most prunable first."""
        raise NotImplementedError

    def choose(self, c: Candidates) -> np.ndarray:
        """The instances to prune (or flag) now: the most prunable, within the budget."""
        if len(c.indices) == 0:
            return c.indices
        return self.ranked(c)[:c.budget]

    def check(self, schedule: PruningSchedule) -> None:
        """Refuse a schedule this rule cannot follow (ValueError)."""

    def due(self, schedule: PruningSchedule, epoch: int) -> bool | None:
        """Whether to decide at the end of `epoch` (counted from 1); None: as the schedule
        says (after `warmup`, every `every` epochs)."""
        return None


@register_pruning_rule("cdf")
@dataclass(frozen=True)
class CDFRule(PruningRule):
    """Prune i when P(w_i <= `epsilon`) > `delta` (Ericsson et al., arXiv:2006.12360),
    highest probability first."""

    epsilon: float = option(*_EPSILON)
    delta: float = option(0.5, Range(0, 1, hi_open=True),
                          "the cdf rule prunes i when P(w_i <= epsilon) > delta")

    def ranked(self, c: Candidates) -> np.ndarray:
        mean, cdf = c.mean(), c.cdf(self.epsilon)
        hit = cdf > self.delta
        order = np.lexsort((c.indices[hit], mean[hit], -cdf[hit]))
        return c.indices[hit][order]


@register_pruning_rule("threshold")
@dataclass(frozen=True)
class ThresholdRule(PruningRule):
    """Prune i when its mean weight is <= `epsilon`, lowest first."""

    epsilon: float = option(*_EPSILON)

    def ranked(self, c: Candidates) -> np.ndarray:
        mean = c.mean()
        order = np.lexsort((c.indices, mean))
        return c.indices[order][mean[order] <= self.epsilon]


@register_pruning_rule("quantile")
@dataclass(frozen=True)
class QuantileRule(PruningRule):
    """Prune the `quantile` fraction of the candidates with the lowest mean weight (rounded
    down; ties broken by index)."""

    quantile: float = option(0.1, Range(0, 1, hi_open=True),
                             "the quantile rule prunes this fraction of the candidates")

    def ranked(self, c: Candidates) -> np.ndarray:
        return c.by_mean()[: math.floor(self.quantile * len(c.indices) + 1e-9)]


@register_pruning_rule("budget")
@dataclass(frozen=True)
class BudgetRule(PruningRule):
    """Keep the fraction `keep` of the pool, chosen by the weights: one decision, at the
    end of the schedule's `score_epochs`, prunes the lowest-weight instances (ties broken
    by index) down to ``floor(keep * N)`` kept."""

    keep: float = option(0.5, Range(0, 1, lo_open=True),
                         "the budget rule keeps this fraction of the pool")

    def ranked(self, c: Candidates) -> np.ndarray:
        kept = math.floor(self.keep * c.num_instances + 1e-9)
        return c.by_mean()[: max(0, len(c.indices) - kept)]

    def check(self, schedule: PruningSchedule) -> None:
        if schedule.score_epochs is None:
            raise ValueError("rule='budget' decides once, when the scoring phase ends: pass "
                             "score_epochs=N (e.g. 2)")
        if schedule.soft:
            raise ValueError("rule='budget' prunes once and for good; soft=True re-decides "
                             "every epoch: use one or the other")

    def due(self, schedule: PruningSchedule, epoch: int) -> bool | None:
        return epoch == schedule.score_epochs


@dataclass(frozen=True)
class MatchedRule(PruningRule):
    """A control: prunes as many as `control` says. `control` is a rule (or its name: the
    count that rule would prune now, within the budget) or a sequence of counts per epoch
    (``[r["decided_count"] for r in other.history]`` of the run being matched)."""

    control: Any = option("cdf", integer(0),
                          "random (lowest) prunes as many as this rule would, or the "
                          "per-epoch counts of a list (another run's decided_count)")

    def __post_init__(self) -> None:
        control = self.control
        if isinstance(control, str):
            if control not in CONTROL_RULES:
                raise ValueError(f"control must be a rule of {CONTROL_RULES.names()} or a list "
                                 f"of counts, got {control!r}")
            control = PRUNING_RULES.get(control).obj()
        elif isinstance(control, PruningRule):
            if isinstance(control, MatchedRule):
                raise ValueError("control must rank by weight itself, not be another "
                                 f"control ({type(control).__name__})")
        else:
            control = tuple(_count(n) for n in control)
        object.__setattr__(self, "control", control)
        check_fields(self, skip=("control",))

    def count(self, c: Candidates) -> int:
        """How many the control prunes now."""
        if isinstance(self.control, PruningRule):
            return len(self.control.choose(c))
        return self.control[c.epoch - 1] if c.epoch <= len(self.control) else 0

    def ranked(self, c: Candidates) -> np.ndarray:
        return c.by_mean()

    def choose(self, c: Candidates) -> np.ndarray:
        if len(c.indices) == 0:
            return c.indices
        return self.order(c)[:min(self.count(c), c.budget)]

    def order(self, c: Candidates) -> np.ndarray:
        """The candidates in the order this control prunes them."""
        raise NotImplementedError


@register_pruning_rule("random")
@dataclass(frozen=True)
class RandomRule(MatchedRule):
    """Prune as many as `control` says, chosen uniformly at random (drawn from (seed,
    epoch)): the control any pruning claim needs."""

    def order(self, c: Candidates) -> np.ndarray:
        return epoch_rng(c.seed, c.epoch, RANDOM_RULE_STREAM).permutation(c.indices)


@register_pruning_rule("lowest")
@dataclass(frozen=True)
class LowestRule(MatchedRule):
    """Prune as many as `control` says, the lowest mean weight first: another weighting's
    choice at a matched kept fraction (e.g. the NN-Weighter control)."""

    def order(self, c: Candidates) -> np.ndarray:
        return c.by_mean()


class _ControlRules:
    """The registered rules a control may copy: those that rank by weight themselves (not
    the controls). Read by the schema (``pruning.control``) and the config reference."""

    key = "pruning.control"

    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in PRUNING_RULES if not issubclass(e.obj, MatchedRule))

    def get(self, name: str) -> Any:
        if name not in self:
            raise ConfigError(f"config key {self.key!r}: {name!r} is not a rule a control can "
                              f"match; choose one of {', '.join(self.names())} or a list of "
                              "counts")
        return PRUNING_RULES.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.names()


#: The rules ``pruning.control`` may name.
CONTROL_RULES = _ControlRules()


def build_rule(name: str | type, values: Mapping[str, Any], options: dict[str, Any]
               ) -> PruningRule:
    """The registered rule `name` (or rule class), each field taken from `options`
    (removed from it: what is left was not a field) or else from `values` (a config
    section's keys); a control named by ``values["control"]`` is built alike. Fields found
    in neither keep their defaults."""
    cls = PRUNING_RULES.get(name).obj if isinstance(name, str) else name
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in options:
            kwargs[f.name] = options.pop(f.name)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
        if issubclass(cls, MatchedRule) and f.name == "control" and isinstance(
                kwargs.get(f.name), str):
            kwargs[f.name] = build_rule(CONTROL_RULES.get(kwargs[f.name]).obj, values, options)
    return cls(**kwargs)


def rule_options(rule: PruningRule) -> dict[str, Any]:
    """The options of `rule` as one flat mapping (a control rule's by its name, and its
    own options beside): what the scheduler saves and compares when resuming."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(rule):  # type: ignore[arg-type]
        value = getattr(rule, f.name)
        if isinstance(value, PruningRule):
            out.update(rule_options(value))
            value = value.name
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _count(c: Any) -> int:
    if isinstance(c, np.generic):
        c = c.item()
    if isinstance(c, bool) or not isinstance(c, int) or c < 0:
        raise ValueError(f"control counts must be integers >= 0, got {c!r}")
    return int(c)


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy().reshape(-1)
