"""The config is strict: every kind of mistake fails before any work, naming the key."""

from __future__ import annotations

import pytest
import torch
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
    ("train:\n  lr: -0.1\n", r"'train.lr': -0.1 is out of range \(0, inf\)"),
    ("pruning:\n  delta: 1.5\n", r"'pruning.delta': 1.5 is out of range \[0, 1\)"),
    ("train:\n  lr: .nan\n", r"'train.lr': must be a finite number, got nan"),
    ("train:\n  lr: .inf\n", r"'train.lr': must be a finite number, got inf"),
    ("train:\n  lr: 1e-3x\n", r"'train.lr': expected a finite number, got '1e-3x'"),
    ("train:\n  device: tpu\n", r"'train.device': unknown device 'tpu'"),
    ("weights:\n  method: magic\n",
     r"'weights.method': unknown weighting method 'magic'; choose one of .*cluster"),
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
    ("train.lr=abc", r"'train.lr': expected a finite number, got 'abc'"),
    ("train.lr=nan", r"'train.lr': must be a finite number"),
    ("train.lr=[1,", r"value of override 'train.lr=\[1,' is not valid YAML"),
    ("train..lr=1", r"empty part"),
    ("train.epochs.x=1", r"'train.epochs': expected an integer, got \{'x': 1\}"),
    ("nope.x=1", r"unknown config key 'nope'"),
])
def test_override_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override])


def test_numbers_in_any_form_float_reads(tmp_path):
    """YAML 1.1 reads 1e-3 (no dot) as a string: accepted wherever a number is expected."""
    cfg = load_config(_write(tmp_path, "train:\n  lr: 1e-3\nmeta:\n  weight_lr: 2E+1\n"),
                      ["train.weight_decay=5e-4"])
    assert cfg.train.lr == 1e-3 and cfg.meta.weight_lr == 20.0
    assert cfg.train.weight_decay == 5e-4


def test_missing_file_directory_and_bad_encoding(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes("experiment:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(tmp_path / "latin1.yaml")


def test_empty_config_warns(tmp_path):
    with pytest.warns(UserWarning, match="is empty"):
        cfg = load_config(_write(tmp_path, "# nothing here\n"))
    assert cfg.train.epochs == 35


def test_relative_paths_resolve_against_the_file_or_the_working_directory(tmp_path,
                                                                         monkeypatch):
    folder = tmp_path / "cfgs"
    folder.mkdir()
    path = folder / "c.yaml"
    path.write_text("data:\n  name: stl10\n  root: ../data\nevaluate:\n  linear:\n"
                    "    data: {train: tr}\n")
    cfg = load_config(path)
    assert cfg.data.root == str(tmp_path / "data")
    assert cfg.evaluate.linear.data.train == str(folder / "tr")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path, ["data.root=elsewhere"])
    assert cfg.data.root == str(tmp_path / "elsewhere")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(overrides=["train.epochs=7", "weights.options={init_alpha: 2.0}"])
    (tmp_path / "resolved.yaml").write_text(dump_config(cfg))
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text())["train"]["epochs"] == 7
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_every_shipped_config_is_valid():
    from betaweighter.experiment.shipped import config_file, shipped_configs

    names = [name for name, _ in shipped_configs()]
    assert "demo" in names and "stl10/bdw" in names and len(names) >= 15
    for name in names:
        needs_root = name.split("/")[0] in ("stl10", "decathlon")
        with config_file(name) as path:
            if needs_root:  # shipped without a root: the one setting a user must give
                with pytest.raises(ConfigError, match="--set data.root="):
                    load_config(path)
            load_config(path, ["data.root=/data"] if needs_root else [])


def test_load_config_takes_a_shipped_name_as_the_command_line_does(tmp_path, monkeypatch):
    from betaweighter.experiment.shipped import config_file

    with config_file("demo/simclr") as path:
        assert load_config("demo/simclr") == load_config(path)
    assert load_config("demo.yaml").pretext.name == "rotation"
    monkeypatch.chdir(tmp_path)  # a file of the same name wins over the shipped one
    (tmp_path / "demo.yaml").write_text("train:\n  epochs: 3\n")
    assert load_config("demo.yaml").train.epochs == 3
    with pytest.raises(ConfigError, match="no shipped config has that name"):
        load_config("demo/nonexistent")


def test_sync_batchnorm_is_refused_where_it_cannot_work():
    from helpers import TINY

    from betaweighter.experiment.factory import build

    if torch.cuda.is_available():
        pytest.skip("the CPU refusal is what this machine can check")
    with pytest.raises(ConfigError, match="needs CUDA"):
        build(load_config(overrides=TINY + ["train.sync_batchnorm=true"]))


def test_a_folder_named_like_a_shipped_config_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # e.g. the output of `betaweighter demo --out demo`
    assert load_config("demo").experiment.name == "demo"
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_config("mine")
