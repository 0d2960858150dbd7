"""A default or a range is written once: the config keys that set a component's option
carry the component's own declaration (pruning rules and schedule, WeightOptimizer,
MetaWeighter), and a rule registered by a user's own code is usable from a config."""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import betaweighter as bw
from betaweighter.data.options import Range
from betaweighter.errors import ConfigError
from betaweighter.experiment.config import load_config
from betaweighter.experiment.factory import build_pruner
from betaweighter.experiment.mirror import span_of
from betaweighter.experiment.sections import MetaSection, PruningSection
from betaweighter.meta.weighter import DIRECTIONS, META_GRADIENTS, MetaWeighter
from betaweighter.pruning import (
    CONTROL_RULES,
    PRUNING_RULES,
    PruningRule,
    PruningSchedule,
    PruningScheduler,
    register_pruning_rule,
)
from betaweighter.weights.optimizer import KINDS, WeightOptimizer

#: meta.* keys that set a WeightOptimizer argument under another name
WEIGHT_OPTIMIZER_KEYS = {"weight_optimizer": "kind", "weight_lr": "lr",
                         "weight_momentum": "momentum", "weight_normalise": "normalise",
                         "weight_rms_decay": "rms_decay", "dense_weight_updates": "dense"}


def _section_field(cls: type, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def _schema_range(f: dataclasses.Field) -> dict:
    return {k: f.metadata[k] for k in ("range", "min_items") if k in f.metadata}


def _declarations() -> list[tuple[type, dataclasses.Field]]:
    """Every option field of the registered rules and of the schedule."""
    return [(cls, f) for cls in [e.obj for e in PRUNING_RULES] + [PruningSchedule]
            for f in dataclasses.fields(cls)]


def test_every_pruning_option_has_its_key_with_the_declared_default_and_range():
    section = {f.name: f for f in dataclasses.fields(PruningSection)}
    for cls, f in _declarations():
        assert f.name in section, f"{cls.__name__}.{f.name} has no pruning.{f.name} key"
        key = section[f.name]
        assert key.default == f.default, f"pruning.{f.name}: default differs from {cls}"
        assert _schema_range(key) == span_of(f.metadata["range"]), f"pruning.{f.name}"
        assert key.metadata.get("help") == f.metadata["help"] and f.metadata["help"]


def test_the_rule_key_has_the_schedulers_default_and_the_registrys_names():
    rule = _section_field(PruningSection, "rule")
    assert rule.default == inspect.signature(PruningScheduler).parameters["rule"].default
    assert rule.metadata["registry"] is PRUNING_RULES
    assert _section_field(PruningSection, "control").metadata["registry"] is CONTROL_RULES
    assert set(CONTROL_RULES.names()) == {"cdf", "threshold", "quantile", "budget"}


def _constructor_keys() -> list[tuple[str, type, str]]:
    """(meta key, component, argument) for every meta key that sets a constructor argument."""
    params = inspect.signature(MetaWeighter).parameters
    keys = [(f.name, MetaWeighter, f.name) for f in dataclasses.fields(MetaSection)
            if f.name in params and f.name not in ("objective", *WEIGHT_OPTIMIZER_KEYS)]
    return keys + [(k, WeightOptimizer, arg) for k, arg in WEIGHT_OPTIMIZER_KEYS.items()]


@pytest.mark.parametrize("key, component, arg", _constructor_keys())
def test_meta_keys_carry_the_constructors_default_and_range(key, component, arg):
    f = _section_field(MetaSection, key)
    assert f.default == inspect.signature(component).parameters[arg].default
    assert _schema_range(f) == span_of(component.ranges.get(arg))


def test_the_meta_choices_are_the_constructors():
    hints = typing.get_type_hints(MetaSection)
    assert typing.get_args(hints["meta_gradient"]) == META_GRADIENTS
    assert typing.get_args(hints["direction"]) == DIRECTIONS
    assert typing.get_args(hints["weight_optimizer"]) == KINDS
    assert len(_constructor_keys()) == 13  # meta_gradient ... shuffle, and six optimiser keys


def _outside(allowed: Range) -> list[float]:
    """Values just beyond each bounded end of `allowed`."""
    out = []
    if allowed.lo is not None:
        out.append(allowed.lo if allowed.lo_open else allowed.lo - 0.5)
    if allowed.hi is not None:
        out.append(allowed.hi if allowed.hi_open else allowed.hi + 0.5)
    return out + [math.nan]


@pytest.mark.parametrize("arg", sorted(WeightOptimizer.ranges))
def test_the_weight_optimizer_refuses_what_its_ranges_refuse(arg):
    for value in _outside(WeightOptimizer.ranges[arg]):
        with pytest.raises(ValueError, match=arg):
            WeightOptimizer(**{arg: value})


@pytest.mark.parametrize("arg", sorted(MetaWeighter.ranges))
def test_the_meta_weighter_refuses_what_its_ranges_refuse(arg):
    model = torch.nn.Linear(2, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for value in _outside(MetaWeighter.ranges[arg]):
        with pytest.raises(ValueError):
            MetaWeighter(model, bw.BetaWeights(5), opt, lambda m: torch.zeros(()),
                         **{arg: value})


@pytest.mark.parametrize("cls, f", _declarations(), ids=lambda x: getattr(x, "name", ""))
def test_each_rule_and_schedule_option_is_checked_against_its_range(cls, f):
    allowed = f.metadata["range"]
    if allowed is None or f.name == "control":
        return
    for value in _outside(allowed):
        with pytest.raises(ValueError, match=f.name):
            cls(**{f.name: value})


@pytest.fixture
def own_rule(monkeypatch):
    """A rule registered by a user's own code (removed from the registry afterwards)."""
    monkeypatch.setattr(PRUNING_RULES, "_entries", dict(PRUNING_RULES._entries))

    @register_pruning_rule("test_every_other")
    @dataclass(frozen=True)
    class EveryOther(PruningRule):
        """Prunes every other candidate, the first `share` of them."""

        share: float = dataclasses.field(default=1.0, metadata={"range": Range(0, 1),
                                                                "help": "fraction"})

        def ranked(self, c):
            picked = c.indices[::2]
            return picked[: math.floor(self.share * len(picked))]

    return EveryOther


def test_a_rule_registered_by_ones_own_code_runs_from_a_config(own_rule):
    cfg = load_config(overrides=["pruning.enabled=true", "pruning.rule=test_every_other",
                                 "pruning.options={share: 0.5}"])
    pruner = build_pruner(cfg, bw.BetaWeights(8), None)
    assert pruner.rule == own_rule(share=0.5)
    pruner.step()
    assert np.flatnonzero(pruner.pruned).tolist() == [0, 2]
    assert pruner.state_dict()["config"]["rule"] == "test_every_other"
    assert "test_every_other" in CONTROL_RULES  # and a control may match it
    control = load_config(overrides=["pruning.enabled=true", "pruning.rule=random",
                                     "pruning.control=test_every_other"])
    assert build_pruner(control, bw.BetaWeights(8), None).rule.control == own_rule()


def test_a_rules_own_options_are_checked(own_rule):
    with pytest.raises(ConfigError, match="share"):
        build_pruner(load_config(overrides=["pruning.rule=test_every_other",
                                            "pruning.options={share: 2}"]),
                     bw.BetaWeights(8), None)
    with pytest.raises(ConfigError, match=r"'pruning.options'.*\['width'\]"):
        build_pruner(load_config(overrides=["pruning.options={width: 2}"]),
                     bw.BetaWeights(8), None)


def test_the_shorthand_and_the_objects_are_one_scheduler():
    w = bw.BetaWeights(8)
    short = PruningScheduler(w, "random", control="quantile", quantile=0.3, warmup=1)
    full = PruningScheduler(w, bw.pruning.RandomRule(bw.pruning.QuantileRule(0.3)),
                            PruningSchedule(warmup=1))
    assert short.rule == full.rule and short.config == full.config
    with pytest.raises(TypeError, match="accepted: .*epsilon"):
        PruningScheduler(w, "cdf", epsilom=0.1)
    with pytest.raises(TypeError, match="set them in the rule"):
        PruningScheduler(w, bw.pruning.CDFRule(), epsilon=0.2)
