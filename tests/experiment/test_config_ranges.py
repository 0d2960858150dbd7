"""Every value is checked where the config is read: an out-of-range number in any section is
one line naming its key, exit status 2, and no run directory; checks that need several
values or the data come before any run directory is made, or remove it again.

The walks go over the schema itself (every int, float and list of them, in every section)
and over the ranges each dataset builder declares, so an option added later is covered
too, and must declare its range to pass.
"""

from __future__ import annotations

import dataclasses
import time
import types
import typing
from typing import Any, Union

import pytest
import torch
import yaml
from helpers import TINY
from ondisk import write_checkpoint, write_stl10

import betaweighter as bw
from betaweighter.cli import main
from betaweighter.data.options import Range
from betaweighter.experiment.config import Config


def _kind(tp: Any) -> str | None:
    """"int", "float", "list[int]" or "list[float]" for a numeric field type, else None
    (a union counts by its numeric member: `int | None`, `Literal[...] | float`)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        kinds = [k for k in map(_kind, typing.get_args(tp)) if k]
        return kinds[0] if kinds else None
    if typing.get_origin(tp) is list:
        item = _kind(typing.get_args(tp)[0])
        return f"list[{item}]" if item in ("int", "float") else None
    return tp.__name__ if tp in (int, float) else None


def _numeric_fields(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any]]:
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            found += _numeric_fields(hints[f.name], key)
        elif (kind := _kind(hints[f.name])) is not None:
            found.append((key, kind, f.metadata))
    return found


def _bad_values(allowed: Range, kind: str, min_items: int = 0) -> list[str]:
    """YAML texts just outside `allowed` (and a NaN for floats; an empty list when a list
    needs items)."""
    integer = "int" in kind
    step = 1 if integer else 0.5
    values: list[Any] = []
    if allowed.lo is not None:
        values.append(allowed.lo if allowed.lo_open else allowed.lo - step)
    if allowed.hi is not None:
        values.append(allowed.hi if allowed.hi_open else allowed.hi + step)
    texts = [str(int(v)) if integer else repr(float(v)) for v in values]
    if not integer:
        texts.append(".nan")
    if kind.startswith("list"):
        texts = [f"[{t}]" for t in texts] + (["[]"] if min_items else [])
    return texts


FIELDS = _numeric_fields()
CASES = [(key, text) for key, kind, meta in FIELDS if "range" in meta
         for text in _bad_values(Range(*meta["range"]), kind, meta.get("min_items", 0))]


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _refused(capsys, args: list[str], key: str) -> str:
    """Run the command; it must exit 2 with one error line naming `key` (warnings about
    the data, such as a partial STL-10 copy, may come before it) and no traceback."""
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines()
             if not line.startswith("betaweighter: warning: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (args[-1], err)
    assert lines[0].startswith("betaweighter: error: ") and key in lines[0], (args[-1], err)
    return lines[0]


def test_every_numeric_option_declares_its_range():
    undeclared = [key for key, _, meta in FIELDS if "range" not in meta]
    assert not undeclared, f"give these fields range metadata (span(...)): {undeclared}"
    assert len(CASES) > 200  # the walk reaches every section


def test_every_numeric_option_out_of_range_is_one_line_before_any_run_directory(
        tmp_path, capsys):
    out = tmp_path / "runs"
    start = time.perf_counter()
    for key, text in CASES:
        _refused(capsys, ["run", "demo", "--out", str(out), *_sets(TINY + [f"{key}={text}"])],
                 f"'{key}")
        assert not out.exists(), (key, text)
    assert time.perf_counter() - start < 60  # about 30 ms a case


def test_a_seed_too_large_for_the_generators_is_refused(tmp_path, capsys):
    line = _refused(capsys, ["run", "demo", "--out", str(tmp_path / "r"),
                             "--set", "experiment.seed=18446744073709551617"], "experiment.seed")
    assert "4294967295" in line and not (tmp_path / "r").exists()


# every dataset builder's declared options, with what each data name needs to be read
DATA = {"demo": [], "mixture": [], "shapes": [], "stl10": ["data.root=/nowhere"],
        "decathlon": ["data.root=/nowhere", "data.target=dtd"],
        "folders": ["data.pool_root=/nowhere", "data.target_root=/nowhere"]}


def test_every_dataset_option_out_of_range_is_refused_as_the_config_is_read(tmp_path, capsys):
    out = tmp_path / "runs"
    walked = 0
    for name, needs in DATA.items():
        builder = getattr(bw.data, "image_folders" if name == "folders" else name)
        for option, allowed in builder.ranges.items():
            if option == "seed":  # set by experiment.seed, walked above
                continue
            for text in _bad_values(allowed, "int" if allowed.integer else "float"):
                _refused(capsys, ["run", "demo", "--out", str(out), *_sets(
                    [f"data.name={name}", *needs, f"data.options={{{option}: {text}}}"])],
                    f"'data.options.{option}'")
                walked += 1
    assert walked > 40 and not out.exists()


def test_a_builder_checks_its_declared_ranges_from_python_before_reading_anything():
    with pytest.raises(ValueError, match=r"pool_fraction: 1\.0 is out of range \(0, 1\)"):
        bw.data.demo(pool_fraction=1.0)
    with pytest.raises(ValueError, match="val_test_fraction: 2 is out of range"):
        bw.data.image_folders("/nowhere", "/nowhere", val_test_fraction=2)  # not "not found"


def test_checks_needing_the_data_come_before_training_and_leave_no_directory(
        tmp_path, capsys):
    out = tmp_path / "runs"
    # 6 conv blocks halve 32 px images below one pixel: refused before torch's error
    line = _refused(capsys, ["run", "demo", "--out", str(out), *_sets(TINY),
                             "--set", "model.blocks=6"], "'model.blocks'")
    assert "at most 5" in line and not out.exists()
    # an STL-10 split larger than a class (the files hold 6 images per class)
    write_stl10(tmp_path / "stl")
    _refused(capsys, ["run", "stl10/bdw", "--out", str(out), *_sets(
        ["model.name=convnet", f"data.root={tmp_path / 'stl'}",
         "data.options={val_train_per_class: 4, val_test_per_class: 4}"])], "'data.options'")
    assert not out.exists()
    # a comparison whose first run cannot start, and one with no seeds
    _refused(capsys, ["demo", "--out", str(out), *_sets(TINY), "--set", "model.blocks=6"],
             "'model.blocks'")
    _refused(capsys, ["demo", "--seeds", "0", "--out", str(out)], "--seeds")
    _refused(capsys, ["compare", "demo", "--seeds", "0", "--out", str(out)], "--seeds")
    assert not out.exists()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_where_there_is_none_is_refused_also_in_a_dry_run(tmp_path, capsys):
    for extra in ([], ["--dry-run"]):
        _refused(capsys, ["run", "demo", "--out", str(tmp_path / "r"), "--device", "mps",
                          *extra], "'train.device'")
    assert not (tmp_path / "r").exists()


def test_deep_yaml_and_an_alias_bomb_are_short_errors(tmp_path, capsys):
    deep = tmp_path / "deep.yaml"
    deep.write_text("train:\n  milestones: " + "[" * 5000 + "]" * 5000 + "\n")
    _refused(capsys, ["run", str(deep), "--dry-run"], "nested")
    lines = ['x0: &x0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]" for i in range(1, 9)]
    for where in ("data:\n  options:\n", "experiment:\n  junk:\n"):
        bomb = tmp_path / "bomb.yaml"
        bomb.write_text(where + "".join(f"    {line}\n" for line in lines))
        assert bomb.stat().st_size < 1500  # 9**9 = 387 million strings once expanded
        start = time.perf_counter()
        line = _refused(capsys, ["run", str(bomb), "--dry-run"], "bomb.yaml")
        assert len(line) < 400 and time.perf_counter() - start < 5
    # a value too long to quote whole is cut
    line = _refused(capsys, ["run", "demo", "--dry-run", "--set",
                             "experiment.name=[" + ", ".join(["x" * 50] * 100) + "]"],
                    "'experiment.name'")
    assert len(line) < 400


def test_evaluate_configs_are_checked_before_the_checkpoint_is_read(tmp_path, capsys,
                                                                     tiny_convnet_config):
    checkpoint = write_checkpoint(tmp_path / "run" / "model.pt", tiny_convnet_config)
    for section, key in (({"c_values": []}, "evaluate.linear.c_values"),
                         ({"c_values": [-1.0]}, "evaluate.linear.c_values[0]"),
                         ({"std": [0.0, 0.0, 0.0]}, "evaluate.linear.std[0]")):
        config = tmp_path / "eval.yaml"
        config.write_text(yaml.safe_dump({"evaluate": {"linear": section}}))
        _refused(capsys, ["evaluate", str(checkpoint), str(config), "--task", "linear"],
                 f"'{key}'")
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["model.pt"]
