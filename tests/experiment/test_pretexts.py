"""Every pretext runs through the one trainer from one config key, on the demo set, and
writes a complete run directory whose checkpoint the evaluators load."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import TINY, one_thread  # noqa: F401 (a fixture)

from betaweighter.checkpoint import read_checkpoint
from betaweighter.errors import ConfigError
from betaweighter.experiment.config import load_config
from betaweighter.experiment.factory import pretext_builder
from betaweighter.experiment.shipped import config_file, shipped_configs
from betaweighter.experiment.trainer import Trainer
from betaweighter.models import load_backbone

FILES = ["config.yaml", "run.json", "splits.json", "metrics.csv", "weights.csv", "summary.json",
         "checkpoints/last.pt", "checkpoints/best.pt", "plots/weight_histograms.png",
         "plots/curves.png", "plots/diagnostics.png", "plots/highest_weighted.png",
         "plots/lowest_weighted.png", "plots/extremes.npz"]
SMALL = "pretext.options={hidden_dim: 16, projection_dim: 8}"
pytestmark = pytest.mark.usefixtures("one_thread")
TARGETS = {"moco": ("target.net.", "queue", "queue_ptr"), "byol": ("target.net.",),
           "simclr": ("projector.",), "simsiam": ("projector.", "predictor."),
           "swav": ("projector.", "prototypes.")}


@pytest.mark.parametrize("name", ["simclr", "moco", "byol", "simsiam", "swav"])
def test_each_pretext_runs_an_epoch_and_writes_a_complete_run(name, tmp_path):
    cfg = load_config(overrides=TINY + [f"experiment.output_root={tmp_path}", "train.epochs=1",
                                        f"pretext.name={name}", SMALL,
                                        f"experiment.name={name}"])
    with Trainer.start(cfg) as trainer:
        summary = trainer.run()
        run = trainer.run_dir
    for f in FILES:
        assert (run / f).is_file(), f
    assert summary["pretext"] == name and summary["epochs"] == 1
    assert json.loads((run / "summary.json").read_text())["pretext"] == name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 1 and float(rows[0]["kept_fraction"]) < 1.0
    assert int(rows[0]["images_seen"]) == 3 * 16  # pool images, not views
    state = read_checkpoint(run / "checkpoints" / "last.pt")
    for prefix in TARGETS[name]:  # the heads, target network and queue are checkpointed
        assert any(k.startswith(prefix) for k in state["pretext"]), prefix
    backbone = load_backbone(run, device="cpu")  # the backbone alone, for the evaluators
    assert backbone.features(torch.zeros(2, 3, 32, 32)).shape == (2, 8)
    assert backbone.data_config["image_size"] == 32


def test_an_mae_run_from_yaml_trains_a_vit_whose_checkpoint_evaluates(tmp_path):
    """demo/mae (BDW, CDF pruning) for one tiny epoch; the checkpoint rebuilds the ViT,
    which the few-shot evaluator reads."""
    from betaweighter.evaluate.fewshot import evaluate_fewshot
    from betaweighter.experiment.shipped import config_file as shipped_file

    with shipped_file("demo/mae") as path:
        cfg = load_config(path, TINY + [
            f"experiment.output_root={tmp_path}", "train.epochs=1", "train.batch_size=16",
            "model.blocks=1", "pretext.options={decoder_dim: 16, decoder_layers: 1, "
            "decoder_heads: 2}"])
    assert cfg.pretext.name == "mae" and cfg.weights.method == "bdw"
    with Trainer.start(cfg) as trainer:
        summary = trainer.run()
        run = trainer.run_dir
    for f in FILES:
        assert (run / f).is_file(), f
    assert summary["pretext"] == "mae"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert int(rows[0]["images_seen"]) == 3 * 16 and float(rows[0]["kept_fraction"]) < 1.0
    state = read_checkpoint(run / "checkpoints" / "last.pt")
    assert state["model_config"] == {"name": "vit_tiny", "num_classes": 4, "image_size": 32,
                                     "patch_size": 4, "blocks": 1}
    assert any(k.startswith("decoder.") for k in state["pretext"])
    backbone = load_backbone(run, device="cpu")
    assert type(backbone.encoder).__name__ == "VisionTransformer"
    y = torch.arange(20) % 4  # four classes of flat colours, slightly noisy: easy to tell
    g = torch.Generator().manual_seed(0)
    x = (y.float() - 1.5).view(-1, 1, 1, 1) + 0.05 * torch.randn(20, 3, 32, 32, generator=g)
    out = evaluate_fewshot(backbone, torch.utils.data.TensorDataset(x, y), way=4, shot=1,
                           query=2, episodes=3, device="cpu")
    assert out["episodes"] == 3 and out["accuracy"] >= 0.9


def test_a_moco_run_resumes_exactly(tmp_path):
    """The queue, its pointer and the key encoder come back with the checkpoint."""
    over = TINY + ["pretext.name=moco", SMALL, "train.epochs=2"]
    outs = []
    for sub, stop in (("a", None), ("b", 1)):
        cfg = load_config(overrides=over + [f"experiment.output_root={tmp_path / sub}"])
        with Trainer.start(cfg) as trainer:
            trainer.run(stop_after=stop)
            run = trainer.run_dir
        if stop is not None:
            with Trainer.resume(run) as trainer:
                trainer.run()
        outs.append(read_checkpoint(run / "checkpoints" / "last.pt"))
    a, b = outs
    for key in ("queue", "queue_ptr"):
        assert torch.equal(a["pretext"][key], b["pretext"][key]), key
    for key, value in a["pretext"].items():
        assert torch.equal(value, b["pretext"][key]), key
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_pretext_options_are_checked_against_the_class(tmp_path):
    base = TINY + [f"experiment.output_root={tmp_path}", "pretext.name=simclr"]
    with pytest.raises(ConfigError, match="'pretext.options.queue_size'; SimCLRPretext takes"):
        Trainer.start(load_config(overrides=base + ["pretext.options={queue_size: 8}"]))
    with pytest.raises(ConfigError, match="'pretext.options.augment.blur'; simclr_view takes"):
        Trainer.start(load_config(overrides=base + ["pretext.options={augment: {blur: 1}}"]))
    with pytest.raises(ConfigError, match="pretext.options.*temperature must be > 0"):
        Trainer.start(load_config(overrides=base + ["pretext.options={temperature: 0}"]))
    with pytest.raises(ConfigError, match="pretext.name"):
        load_config(overrides=["pretext.name=dino"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["simclr", "moco", "byol", "simsiam", "swav", "mae"])
def test_a_shipped_config_per_pretext_for_the_demo_and_stl10(name):
    names = dict(shipped_configs())
    for shipped in (f"demo/{name}", f"stl10/{name}"):
        assert shipped in names, shipped
        with config_file(shipped) as path:
            cfg = load_config(path, ["data.root=/data"] if shipped.startswith("stl10") else [])
        assert cfg.pretext.name == name
        pretext, model_config = pretext_builder(name)(cfg, dict(cfg.pretext.options))
        assert model_config["name"] == cfg.model.name
