"""Run loggers: TensorBoard event files read back, and the W&B adapter's calls."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from PIL import Image

from betaweighter.errors import ConfigError
from betaweighter.experiment.loggers import build_loggers


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0,
                                                       "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_steps_epochs_histograms_and_plots(tmp_path):
    pytest.importorskip("tensorboard")
    Image.fromarray(np.full((8, 12, 3), 200, np.uint8)).save(tmp_path / "curves.png")
    log = build_loggers(["csv", "tensorboard"], tmp_path)
    log.log_step(1, {"loss": 2.5, "meta_loss": float("nan"), "mean_weight": 0.5})
    log.log_step(2, {"loss": 1.5, "meta_loss": 0.25, "mean_weight": 0.5})
    weights = np.linspace(0, 1, 101)
    log.log_epoch(1, {"epoch": 1, "train_loss": 2.0, "val_accuracy": 0.75, "note": "x",
                      "pruned_in_domain": None}, weights)
    log.log_images(1, [tmp_path / "curves.png"])
    log.close()
    acc = _events(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in acc.Scalars("step/loss")] == [(1, 2.5), (2, 1.5)]
    assert [e.step for e in acc.Scalars("step/meta_loss")] == [2]  # NaN is not logged
    assert acc.Scalars("epoch/val_accuracy")[0].value == pytest.approx(0.75)
    assert "epoch/note" not in acc.Tags()["scalars"]
    histogram = acc.Histograms("weights")[0].histogram_value
    assert histogram.num == 101 and histogram.min == 0.0 and histogram.max == 1.0
    image = acc.Images("plots/curves")[0]
    assert (image.width, image.height) == (12, 8)


def test_wandb_adapter_resumes_the_run_by_name_and_logs(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, values, step=None):
            calls.append(("log", sorted(values), step))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(
        init=lambda **kw: calls.append(("init", kw["id"], kw["resume"])) or Run(),
        Histogram=lambda values: ("histogram", len(values)),
        Image=lambda path: ("image", path))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run_dir = tmp_path / "demo-cluster-1"
    run_dir.mkdir()
    log = build_loggers(["wandb"], run_dir, {"train": {"lr": 0.1}})
    log.log_step(3, {"loss": 1.0})
    log.log_epoch(1, {"epoch": 1, "train_loss": 1.0}, np.ones(4))
    log.close()
    assert calls == [("init", "demo-cluster-1", "allow"), ("log", ["step/loss"], 3),
                     ("log", ["epoch/epoch", "epoch/train_loss", "weights"], None),
                     ("finish",)]


def test_an_unknown_or_missing_logger_is_one_config_error(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown logger 'tb'"):
        build_loggers(["tb"], tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'betaweighter\[wandb\]'"):
        build_loggers(["wandb"], tmp_path)


def test_the_cli_prints_library_log_records_as_one_line(capsys):
    import logging

    from betaweighter.cli import main

    assert main(["configs"]) == 0  # main() sets up the "betaweighter" logger once
    capsys.readouterr()
    logging.getLogger("betaweighter.data.sources.demo").warning("cache\nrebuilt")
    logging.getLogger("betaweighter.experiment.resume").info("note: data.root moved")
    logging.getLogger("other").warning("not ours")
    assert capsys.readouterr().err.splitlines() == [
        "betaweighter: warning: cache rebuilt", "betaweighter: note: data.root moved"]

