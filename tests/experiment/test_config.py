"""The config is strict: every kind of mistake fails before any work, naming the key."""

from __future__ import annotations

import pytest
import yaml

from betaweighter.experiment.config import ConfigError, dump_config, load_config


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_typed_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, "train:\n  lr: 0.05\n"),
                      ["train.epochs=3", "meta.normalise=true", "pruning.control=[1, 2]",
                       "train.lr=1"])
    assert cfg.train.epochs == 3 and cfg.meta.normalise is True
    assert cfg.pruning.control == [1, 2]
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # an int is a valid float
    assert cfg.weights.method == "bdw" and cfg.meta.way == 10


@pytest.mark.parametrize("text,match", [
    ("train:\n  lr: 0.1\n  lrr: 0.2\n", r"unknown config key 'train.lrr'.*allowed.*epochs"),
    ("trian:\n  lr: 0.1\n", r"unknown config key 'trian'.*top level"),
    ("train:\n  lr: 0.1\n  lr: 0.2\n", r"duplicate key 'lr' at line 3 \(first at line 2\)"),
    ("train:\n  epochs: ten\n", r"'train.epochs': expected an integer, got 'ten'"),
    ("train:\n  lr: -0.1\n", r"'train.lr': -0.1 is out of range \(0, inf\]"),
    ("pruning:\n  delta: 1.5\n", r"'pruning.delta': 1.5 is out of range \[0, 1\]"),
    ("weights:\n  method: magic\n", r"'weights.method': expected one of 'bdw'.*got 'magic'"),
    ("meta:\n  normalise: 1\n", r"'meta.normalise': expected true or false"),
    ("train:\n  milestones: [25, 15]\n", r"'train.milestones': must be increasing"),
    ("data:\n  name: stl10\n", r"'data.root'"),
    ("data:\n  name: decathlon\n  root: /x\n", r"'data.target'"),
    ("train: 3\n", r"'train': expected a mapping"),
    ("- a\n- b\n", r"must hold a mapping"),
    ("train: [\n", r"not valid YAML"),
])
def test_file_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize("override,match", [
    ("train.lr", r"must look like key.path=value"),
    ("train.lr=abc", r"'train.lr': expected a number, got 'abc'"),
    ("train..lr=1", r"empty part"),
    ("train.epochs.x=1", r"'train.epochs': expected an integer, got \{'x': 1\}"),
    ("nope.x=1", r"unknown config key 'nope'"),
])
def test_override_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(overrides=["train.epochs=7", "weights.options={init_alpha: 2.0}"])
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text())["train"]["epochs"] == 7
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_every_shipped_config_is_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[2] / "configs").rglob("*.yaml"))
    assert configs, "no configs found"
    for path in configs:
        load_config(path)
