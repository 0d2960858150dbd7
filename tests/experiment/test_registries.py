"""Every pluggable name is declared once, by a registry's decorator (or, for transfer tasks,
by the `evaluate` section that configures it): the schema, the factory, the CLI and the
errors read that declaration. A data source, a model and a meta objective defined in this
file (a third party's) work from a config."""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest
import torch
from helpers import TINY

from betaweighter import data as bwdata
from betaweighter.cli import _parser
from betaweighter.data.sources import DATA_SOURCES, register_data_source
from betaweighter.errors import ConfigError
from betaweighter.evaluate.fusion import FUSION_MODES
from betaweighter.experiment.config import load_config
from betaweighter.experiment.evaluation import check_task
from betaweighter.experiment.sections import Config, task_names, task_section
from betaweighter.meta.objectives import OBJECTIVES, PrototypicalLoss, register_objective
from betaweighter.models import MODELS, Backbone, conv_net, load_backbone, register_model
from betaweighter.registry import Registry

#: config keys that choose a component: each must read a registry
CHOOSERS = ("data.name", "model.name", "pretext.name", "weights.method", "meta.objective")


@register_data_source("test_digits", fields=("root",), required={"root": "any folder"})
def digits_of_a_third_party(root: str, *, seed: int = 0, image_size: int = 16
                            ) -> bwdata.DataBundle:
    """The demo set under another name: a data source of the test's own."""
    assert root  # the DataSection key reaches the builder by name
    return bwdata.demo(seed=seed, image_size=image_size)


@register_model("test_net", fields=("width",))
def net_of_a_third_party(num_classes: int = 4, width: int = 8) -> Backbone:
    """A 2-block conv net: a model of the test's own."""
    return conv_net(num_classes, width=width, blocks=2)


@register_objective("test_protos", fields={"way": "way"}, shot=1, query=1)
class OneShotProtos(PrototypicalLoss):
    """One-shot episodes: a meta objective of the test's own."""


def _fields(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, dataclasses.Field, object]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], key + ".")
        else:
            yield key, f, hints[f.name]


def _literals(tp: object) -> set[str]:
    if typing.get_origin(tp) is typing.Literal:
        return {a for a in typing.get_args(tp) if isinstance(a, str)}
    return set().union(*(_literals(a) for a in typing.get_args(tp)))


def test_no_schema_choice_repeats_a_registry():
    registries = {k: f.metadata["registry"] for k, f, _ in _fields(Config)
                  if isinstance(f.metadata.get("registry"), Registry)}
    assert set(CHOOSERS) <= set(registries)
    for key, _, tp in _fields(Config):
        choices = _literals(tp)
        for name, registry in registries.items():
            overlap = choices & set(registry.names())
            assert len(overlap) < 2, f"{key} lists {sorted(overlap)}, names of {name}'s registry"


def test_the_registries_hold_the_built_ins():
    assert {"demo", "mixture", "stl10", "decathlon", "folders", "shapes"} <= set(
        DATA_SOURCES.names())
    assert {"convnet", "resnet18", "resnet50", "vit_tiny"} <= set(MODELS.names())
    assert {"prototypical", "detection"} <= set(OBJECTIVES.names())
    with pytest.raises(ConfigError, match=r"'model.name': unknown model 'resnet181'; choose "
                                          r"one of convnet, resnet18.*@register_model"):
        load_config(overrides=["model.name=resnet181"])
    with pytest.raises(ConfigError, match=r"'data.name': unknown data source 'stl'"):
        load_config(overrides=["data.name=stl"])
    with pytest.raises(ConfigError, match=r"'meta.objective': unknown meta objective"):
        load_config(overrides=["meta.objective=episodes"])


def test_a_required_key_of_a_data_source_is_named():
    with pytest.raises(ConfigError, match=r"'data.root': data test_digits needs any folder"):
        load_config(overrides=["data.name=test_digits"])
    with pytest.raises(ConfigError, match=r"'data.target': data decathlon needs the Visual "
                                          r"Decathlon target domain"):
        load_config(overrides=["data.name=decathlon", "data.root=/somewhere"])


def test_components_of_ones_own_run_from_a_config(tmp_path):
    from betaweighter.experiment.trainer import Trainer

    tiny = [o for o in TINY if not o.startswith(("data.", "model.", "meta.", "pruning."))]
    cfg = load_config(overrides=tiny + [
        "data.name=test_digits", f"data.root={tmp_path}", "data.options={image_size: 16}",
        "model.name=test_net", "model.width=6", "meta.objective=test_protos", "meta.way=3",
        "pruning.enabled=false", "train.epochs=1", f"experiment.output_root={tmp_path}"])
    with Trainer.start(cfg) as trainer:
        trainer.run()
        objective = trainer.c.meta.objective
    assert isinstance(objective, OneShotProtos)
    assert (objective.way, objective.shot, objective.query) == (3, 1, 1)
    assert trainer.c.bundle.image_size == 16
    model = load_backbone(trainer.run_dir, "cpu")  # rebuilt through the model registry
    assert model.feature_dim == 6 and model(torch.zeros(2, 3, 16, 16)).shape == (2, 4)
    with pytest.raises(ConfigError, match=r"'data.options.crop'; digits_of_a_third_party "
                                          r"takes: image_size"):
        from betaweighter.experiment.factory import build

        build(load_config(overrides=["data.name=test_digits", f"data.root={tmp_path}",
                                     "data.options={crop: 3}"]))


def _choices(parser: argparse.ArgumentParser, command: str, option: str) -> tuple[str, ...]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if option in a.option_strings)
    return tuple(action.choices)


def test_the_command_line_offers_the_declared_names():
    parser = _parser()
    assert _choices(parser, "evaluate", "--task") == task_names()
    assert _choices(parser, "evaluate", "--fuse-mode") == tuple(FUSION_MODES)
    for task in task_names():  # each task has a runner (invariance has its own command)
        if task == "invariance":
            continue
        default = dataclasses.asdict(task_section(task)())  # a section with no data
        with pytest.raises(ConfigError, match="required|needs"):
            check_task(task, default)  # a known task: only the missing data is refused
    with pytest.raises(ConfigError, match="unknown evaluation task 'invariance'"):
        check_task("invariance", {"data": {}})


def test_every_optimizer_and_schedule_a_config_names_builds():
    from betaweighter.experiment.factory import build_optimizer, build_scheduler
    from betaweighter.experiment.optimizers import OPTIMIZERS, SCHEDULES

    model = conv_net(4, width=4, blocks=1)
    for name in OPTIMIZERS:
        cfg = load_config(overrides=[f"train.optimizer={name}", "train.lr=0.03",
                                     "train.weight_decay=0.001"])
        opt = build_optimizer(cfg, model)
        assert type(opt).__name__.lower() == name
        assert opt.param_groups[0]["lr"] == 0.03
        assert opt.param_groups[0]["weight_decay"] == 0.001
    for name in SCHEDULES:
        cfg = load_config(overrides=[f"train.schedule={name}", "train.lr=0.1",
                                     "train.milestones=[1]", "train.epochs=4"])
        opt = build_optimizer(cfg, model)
        schedule = build_scheduler(cfg, opt)
        opt.step()
        schedule.step()
        lr = opt.param_groups[0]["lr"]
        assert lr == pytest.approx({"multistep": 0.01, "cosine": 0.1 * (1 + 2 ** -0.5) / 2,
                                    "constant": 0.1}[name])
    with pytest.raises(ConfigError, match=r"'train.optimizer': expected one of 'sgd'"):
        load_config(overrides=["train.optimizer=lion"])
