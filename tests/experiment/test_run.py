"""A tiny demo run end to end: every file, exact kill-and-resume, run directories."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import TINY

from betaweighter.cli import main
from betaweighter.errors import CheckpointError, ConfigError, RunLockedError
from betaweighter.experiment.config import load_config
from betaweighter.experiment.rundir import RunDir, create_run_dir
from betaweighter.experiment.trainer import Trainer
from betaweighter.models import load_backbone

EXPECTED_FILES = ["config.yaml", "run.json", "splits.json", "metrics.csv", "weights.csv",
                  "summary.json", "checkpoints/last.pt", "checkpoints/best.pt",
                  "plots/weight_histograms.png", "plots/curves.png", "plots/diagnostics.png",
                  "plots/highest_weighted.png", "plots/lowest_weighted.png",
                  "plots/extremes.npz"]
COLUMNS = {"epoch", "train_loss", "meta_loss", "mean_weight", "val_accuracy", "kept_fraction",
           "pruned", "decided", "pruned_in_domain", "epoch_seconds", "images_seen",
           "weight_spread", "confident_low", "confident_high", "meta_grad_scale",
           "median_visits", "auroc_in_domain", "pruned_in_domain_share"}
TIMING = ("epoch_seconds",)


def _rows(path, drop=TIMING):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def _start(tmp_path, *overrides):
    cfg = load_config(overrides=TINY + [f"experiment.output_root={tmp_path}", *overrides])
    return Trainer.start(cfg)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    with _start(out, "train.loggers=[csv,tensorboard]") as trainer:
        summary = trainer.run()
    return trainer.cfg, trainer.run_dir, summary


def test_a_run_writes_every_file(finished):
    _, run, summary = finished
    for name in EXPECTED_FILES:
        assert (run / name).is_file(), name
    rows = _rows(run / "metrics.csv", drop=())
    assert len(rows) == 2 and COLUMNS <= set(rows[0])
    assert float(rows[1]["kept_fraction"]) < 1.0  # quantile pruning removed 10% per epoch
    assert int(rows[0]["pruned"]) == int(rows[0]["decided"]) > 0
    assert int(rows[0]["images_seen"]) == 3 * 16
    assert 0.0 <= float(rows[0]["auroc_in_domain"]) <= 1.0
    weights = list(csv.DictReader(open(run / "weights.csv")))
    assert len(weights) == 1802 and set(weights[0]) == {"index", "mean", "std", "pruned"}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))  # train.loggers: tensorboard
    events.Reload()
    logged = [round(e.value, 4) for e in events.Scalars("epoch/train_loss")]
    assert logged == [round(float(r["train_loss"]), 4) for r in rows]
    assert len(events.Scalars("step/loss")) == 2 * 3 and events.Histograms("weights")
    assert "plots/curves" in events.Tags()["images"]
    assert sum(int(w["pruned"]) for w in weights) == (int(rows[0]["pruned"])
                                                      + int(rows[1]["pruned"]))
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["pool"] == 1802 and info["data_config"]["image_size"] == 32
    # the checkpoint is what the evaluators load, with the input it was trained on
    model = load_backbone(run, device="cpu")
    assert model.features(torch.zeros(1, 3, 32, 32)).shape == (1, 8)
    assert model.data_config["image_size"] == 32 and len(model.data_config["mean"]) == 3


def test_stored_paths_are_absolute_and_the_run_reads_without_data(finished, tmp_path,
                                                                  monkeypatch):
    _, run, _ = finished
    monkeypatch.chdir(tmp_path)  # from anywhere
    r = RunDir(run)
    assert r.config().experiment.output_root == str(run.parent)
    assert len(r.metrics()) == 2 and r.summary()["epochs"] == 2
    assert r.state("best")["epoch"] >= 1


def test_kill_and_resume_finishes_exactly_like_an_uninterrupted_run(finished, tmp_path):
    cfg, run, summary = finished
    with _start(tmp_path) as trainer:
        assert trainer.run(stop_after=1) is None  # "killed" after epoch 1
        other = trainer.run_dir
    assert len(_rows(other / "metrics.csv")) == 1
    with Trainer.resume(other) as trainer:
        resumed = trainer.run()
    assert _rows(other / "metrics.csv") == _rows(run / "metrics.csv")
    assert (other / "weights.csv").read_text() == (run / "weights.csv").read_text()
    assert resumed["test_accuracy"] == summary["test_accuracy"]


def test_a_second_writer_is_refused_with_the_holders_pid(finished, tmp_path):
    import os

    with _start(tmp_path) as trainer:
        trainer.run(stop_after=1)
        with pytest.raises(RunLockedError, match=f"process {os.getpid()}"):
            Trainer.resume(trainer.run_dir)


def test_resume_refuses_an_edited_config_and_other_settings(finished, tmp_path):
    with _start(tmp_path, "train.epochs=3") as trainer:
        trainer.run(stop_after=2)
        run = trainer.run_dir
    with pytest.raises(ConfigError, match="cannot change on --resume"):
        Trainer.resume(run, overrides=["meta.way=5"])
    with pytest.raises(ConfigError, match="already trained 2 epochs"):
        Trainer.resume(run, overrides=["train.epochs=1"])
    text = (run / "config.yaml").read_text().replace("way: 3", "way: 4")
    (run / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match="another config"):
        Trainer.resume(run)


def test_extending_a_finished_run(finished, tmp_path):
    with _start(tmp_path, "train.epochs=1") as trainer:
        trainer.run()
        run = trainer.run_dir
    with Trainer.resume(run, overrides=["train.epochs=2"]) as trainer:
        summary = trainer.run()
    assert summary["epochs"] == 2 and len(_rows(run / "metrics.csv")) == 2
    change = json.loads((run / "run.json").read_text())["changes"][0]
    assert change == {"key": "train.epochs", "from": 1, "to": 2, "at_epoch": 1}


def test_run_directories_never_overwrite(tmp_path):
    a, b, c = (create_run_dir(tmp_path, "same name") for _ in range(3))
    assert [p.name for p in (a, b, c)] == ["same-name", "same-name-1", "same-name-2"]
    (a / "keep.txt").write_text("results")
    create_run_dir(tmp_path, "same name")
    assert (a / "keep.txt").read_text() == "results"


def test_cli_weights_plot_and_errors(finished, tmp_path, capsys):
    _, run, _ = finished
    before = {p: p.stat().st_mtime_ns for p in (run / "config.yaml", run / "metrics.csv")}
    assert main(["weights", str(run), "-o", str(tmp_path / "w.csv")]) == 0
    assert (tmp_path / "w.csv").read_text() == (run / "weights.csv").read_text()
    assert "weights have" in capsys.readouterr().err  # the verdict
    assert main(["plot", str(run)]) == 0
    assert "curves.png" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in before} == before  # read-only commands
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    assert main(["run", str(bad)]) == 2
    assert "duplicate key 'lr'" in capsys.readouterr().err
    assert main(["run", str(bad), "--resume", str(run)]) == 2
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "betaweighter" in capsys.readouterr().out


def test_cli_run_end_to_end_by_shipped_name(tmp_path, capsys):
    args = ["run", "demo", "--out", str(tmp_path)]
    for item in TINY + ["train.epochs=1", "experiment.name=cli"]:
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "run cli finished: 1 epochs of bdw on demo" in out and "test accuracy" in out
    assert (tmp_path / "cli" / "summary.json").is_file()
    assert main(["run", "demo", "--dry-run", "--out", str(tmp_path / "dry")]) == 0
    captured = capsys.readouterr()
    assert "experiment:" in captured.out and "would write" in captured.err
    assert not (tmp_path / "dry").exists()


@pytest.mark.parametrize("method", ["cluster", "dw", "l2rw", "nn", "weightnet", "heuristic",
                                    "random", "rotnet"])
def test_every_method_runs_from_one_config_key(method, tmp_path):
    with _start(tmp_path, f"weights.method={method}", "train.epochs=1",
                "pruning.rule=threshold", f"experiment.name={method}") as trainer:
        summary = trainer.run()
    assert summary["method"] == method and summary["epochs"] == 1
    weights = list(csv.DictReader(open(tmp_path / method / "weights.csv")))
    assert len(weights) == 1802 and all(0.0 <= float(w["mean"]) <= 10.0 for w in weights)


BUDGET = ["weights.method=cluster", "weights.options={clusters: 8}", "meta.normalise=true",
          "meta.direction=running", "meta.every=2", "meta.meta_gradient=one_sided",
          "pruning.rule=budget", "pruning.keep=0.4", "pruning.score_epochs=1",
          "train.epochs=3"]


def test_budget_mode_scores_prunes_once_then_trains_plainly_and_resumes_exactly(tmp_path):
    with _start(tmp_path / "a", *BUDGET) as trainer:
        summary = trainer.run()
        steps_after = trainer.c.meta.meta_steps
        run = trainer.run_dir
    rows = _rows(run / "metrics.csv", drop=())
    assert [float(r["kept_fraction"]) for r in rows] == [pytest.approx(0.4, abs=1e-3)] * 3
    assert [int(r["decided"]) for r in rows] == [1802 - int(0.4 * 1802), 0, 0]
    assert int(rows[1]["images_seen"]) - int(rows[0]["images_seen"]) == 3 * 16
    assert rows[1]["meta_loss"] == "nan" and rows[0]["meta_loss"] != "nan"  # plain after
    assert summary["kept_fraction"] == pytest.approx(0.4, abs=1e-3)
    assert "final_test_accuracy" in summary and "final_val_accuracy" in summary
    assert steps_after == 3  # the scoring epoch's 3 steps, none after
    with _start(tmp_path / "b", *BUDGET) as trainer:  # killed after the pruning decision
        assert trainer.run(stop_after=2) is None
        other = trainer.run_dir
    with Trainer.resume(other) as trainer:
        resumed = trainer.run()
        assert trainer.c.meta.plain
    assert _rows(other / "metrics.csv") == _rows(run / "metrics.csv")
    assert (other / "weights.csv").read_text() == (run / "weights.csv").read_text()
    assert resumed["test_accuracy"] == summary["test_accuracy"]


def test_a_run_that_cannot_start_leaves_no_directory(tmp_path, capsys):
    args = ["run", "stl10/bdw", "--out", str(tmp_path), "--set",
            f"data.root={tmp_path / 'nowhere'}"]
    assert main(args) == 2
    assert "stl10_binary" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("pretext", ["rotation", "simclr"])
def test_pretext_init_starts_from_the_checkpoint_or_refuses_another_width(
        tmp_path, checkpoint_writer, pretext):
    from betaweighter.experiment.factory import build

    config = {"name": "convnet", "num_classes": 4, "width": 8, "blocks": 2}
    good = checkpoint_writer(tmp_path / "good.pt", config, seed=5)
    cfg = load_config(overrides=TINY + [f"pretext.init={good}", f"pretext.name={pretext}"])
    backbone = build(cfg).backbone
    saved = torch.load(good, weights_only=True)["model"]
    assert all(torch.equal(backbone.state_dict()[k].cpu(), v) for k, v in saved.items())
    wide = checkpoint_writer(tmp_path / "wide.pt", {**config, "width": 16})
    cfg = load_config(overrides=TINY + [f"pretext.init={wide}", f"pretext.name={pretext}"])
    with pytest.raises(ConfigError, match="'pretext.init'.*another network"):
        build(cfg)


def test_pretext_init_reads_a_published_layout_into_the_encoder(tmp_path):
    """A MoCo-layout ResNet-18 starts a rotation run: the encoder is the file's, the
    rotation head is new; an unknown layout name is a config error naming the key."""
    import torchvision

    from betaweighter.experiment.factory import build

    net = torchvision.models.resnet18(weights=None)
    trunk = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in trunk.items()},
                "arch": "resnet18"}, tmp_path / "moco.pth.tar")
    base = TINY + [f"pretext.init={tmp_path / 'moco.pth.tar'}", "model.name=resnet18"]
    backbone = build(load_config(overrides=base)).backbone
    assert all(torch.equal(backbone.encoder.state_dict()[k].cpu(), v) for k, v in trunk.items())
    assert backbone.head.out_features == 4
    with pytest.raises(ConfigError, match="'pretext.init_format'.*unknown checkpoint format"):
        build(load_config(overrides=base + ["pretext.init_format=dino"]))
