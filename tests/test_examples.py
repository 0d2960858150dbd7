"""The example scripts run end to end on tiny data in the real on-disk formats."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ondisk import write_decathlon, write_stl10

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BETAWEIGHTER_CACHE", str(tmp_path / "cache"))


def test_custom_loop(capsys):
    _load("custom_loop").main(epochs=1, pool_size=64)
    assert "epoch 0: rotation loss" in capsys.readouterr().out


def test_budget_loop_scores_prunes_to_half_and_keeps_mostly_shapes(capsys):
    shapes = _load("budget_loop").main(epochs=2, score_epochs=1, shapes_per_class=60)
    out = capsys.readouterr().out
    assert "epoch 1 (scoring): kept 240 of 480" in out and "epoch 2 (plain)" in out
    assert shapes > 0.5  # better than the pool's one-to-one mix


@pytest.mark.filterwarnings("ignore:.*the official STL-10")
def test_stl10_example(tmp_path, capsys):
    write_stl10(tmp_path)
    accuracy = _load("stl10").main([
        "--data-root", str(tmp_path), "--model", "convnet", "--epochs", "2", "--max-steps", "2",
        "--batch-size", "8", "--episode", "3", "1", "2", "--val-per-class", "3", "3",
        "--workers", "0",
    ])
    out = capsys.readouterr().out
    assert "epoch 2: val accuracy" in out
    assert f"test accuracy (linear probe): {accuracy:.4f}" in out  # what it returns


def test_decathlon_example(tmp_path):
    write_decathlon(tmp_path / "data")
    summary = _load("decathlon").main([
        "--data-root", str(tmp_path / "data"), "--target", "dtd", "--out", str(tmp_path / "runs"),
        "--set", "model.name=convnet", "--set", "model.width=8", "--set", "train.epochs=1",
        "--set", "train.max_steps_per_epoch=2", "--set", "train.batch_size=8",
        "--set", "meta.way=3", "--set", "meta.shot=1", "--set", "meta.query=1",
        "--set", "data.workers=0", "--set", "evaluate.c_grid=[1.0]",
    ])
    assert summary["dataset"].startswith("decathlon") and summary["epochs"] == 1
    assert (tmp_path / "runs" / "decathlon-dtd-bdw" / "summary.json").is_file()


def test_simclr_loop(capsys):
    _load("simclr_loop").main(epochs=1, pool_size=64)
    assert "epoch 0: NT-Xent" in capsys.readouterr().out


def test_byol_loop(capsys):
    _load("byol_loop").main(epochs=1, pool_size=64)
    assert "epoch 0: BYOL loss" in capsys.readouterr().out


def test_swav_loop(capsys):
    _load("swav_loop").main(epochs=1, pool_size=64)
    assert "epoch 0: SwAV loss" in capsys.readouterr().out


def test_mae_loop(capsys):
    _load("mae_loop").main(epochs=1, pool_size=64)
    assert "epoch 0: MAE loss" in capsys.readouterr().out


def test_lightly_loop(capsys):
    pytest.importorskip("lightly")
    _load("lightly_loop").main(epochs=1, pool_size=64)
    assert "epoch 0: NT-Xent (lightly)" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["custom_loop", "simclr_loop", "byol_loop",
                                  "swav_loop", "mae_loop"])
def test_wrapping_takes_no_more_than_five_added_lines(name):
    lines = (EXAMPLES / f"{name}.py").read_text().splitlines()
    marked = [n for n, line in enumerate(lines)
              if line.split("# + betaweighter")[0].strip() and "# + betaweighter" in line]
    # each mark is one added statement; a statement may run on into one more line
    physical = sum(1 + lines[n].rstrip().endswith(",") for n in marked)
    assert 3 <= len(marked) and physical <= 5, (len(marked), physical)
