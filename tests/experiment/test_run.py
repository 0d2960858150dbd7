"""A tiny demo run end to end: every file, exact kill-and-resume, clear checkpoint errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import TINY

from betaweighter.cli import main
from betaweighter.evaluate.checkpoint import load_backbone
from betaweighter.experiment.checkpoint import CheckpointError
from betaweighter.experiment.config import load_config
from betaweighter.experiment.rundir import create_run_dir
from betaweighter.experiment.trainer import Trainer

EXPECTED_FILES = ["config.yaml", "splits.json", "metrics.csv", "weights.csv", "summary.json",
                  "checkpoints/last.pt", "checkpoints/best.pt", "plots/weight_histograms.png",
                  "plots/curves.png", "plots/highest_weighted.png", "plots/lowest_weighted.png"]
COLUMNS = {"epoch", "train_loss", "meta_loss", "mean_weight", "val_accuracy", "kept_fraction",
           "pruned", "pruned_in_domain", "epoch_seconds", "images_seen"}


def _rows(path, drop=("epoch_seconds",)):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(overrides=TINY + [f"experiment.output_root={out}"])
    run = create_run_dir(out, "tiny")
    summary = Trainer(cfg, run).run()
    return cfg, run, summary


def test_a_run_writes_every_file(finished):
    _, run, summary = finished
    for name in EXPECTED_FILES:
        assert (run / name).is_file(), name
    rows = _rows(run / "metrics.csv", drop=())
    assert len(rows) == 2 and COLUMNS <= set(rows[0])
    assert float(rows[1]["kept_fraction"]) < 1.0  # quantile pruning removed 10% per epoch
    assert int(rows[0]["pruned"]) > 0 and int(rows[0]["images_seen"]) == 3 * 16
    weights = list(csv.DictReader(open(run / "weights.csv")))
    assert len(weights) == 1802 and set(weights[0]) == {"index", "mean", "std", "pruned"}
    assert sum(int(w["pruned"]) for w in weights) == int(rows[0]["pruned"]) + int(rows[1]["pruned"])
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    # the checkpoint is what the evaluators load
    model = load_backbone(run, device="cpu")
    assert model.features(torch.zeros(1, 3, 32, 32)).shape == (1, 8)


def test_kill_and_resume_finishes_exactly_like_an_uninterrupted_run(finished, tmp_path):
    cfg, run, summary = finished
    other = create_run_dir(tmp_path, "tiny")
    assert Trainer(cfg, other).run(stop_after=1) is None  # "killed" after epoch 1
    assert len(_rows(other / "metrics.csv")) == 1
    resumed = Trainer.resume(other).run()
    assert _rows(other / "metrics.csv") == _rows(run / "metrics.csv")
    assert (other / "weights.csv").read_text() == (run / "weights.csv").read_text()
    assert resumed["test_accuracy"] == summary["test_accuracy"]


def test_corrupt_checkpoint_is_a_clear_error(finished, tmp_path):
    cfg, _, _ = finished
    run = create_run_dir(tmp_path, "tiny")
    Trainer(cfg, run).run(stop_after=1)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"last.pt.*cannot be read"):
        Trainer.resume(run)
    last.unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer.resume(run)


def test_resume_refuses_an_edited_config(finished, tmp_path):
    cfg, _, _ = finished
    run = create_run_dir(tmp_path, "tiny")
    Trainer(cfg, run).run(stop_after=1)
    text = (run / "config.yaml").read_text().replace("epochs: 2", "epochs: 5")
    (run / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match="another config"):
        Trainer.resume(run)


def test_run_directories_never_overwrite(tmp_path):
    a, b, c = (create_run_dir(tmp_path, "same name") for _ in range(3))
    assert [p.name for p in (a, b, c)] == ["same-name", "same-name-1", "same-name-2"]
    (a / "keep.txt").write_text("results")
    create_run_dir(tmp_path, "same name")
    assert (a / "keep.txt").read_text() == "results"


def test_cli_weights_plot_and_errors(finished, tmp_path, capsys):
    _, run, _ = finished
    assert main(["weights", str(run), "-o", str(tmp_path / "w.csv")]) == 0
    assert (tmp_path / "w.csv").read_text() == (run / "weights.csv").read_text()
    assert main(["plot", str(run)]) == 0
    assert "curves.png" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    assert main(["run", str(bad)]) == 2
    assert "duplicate key 'lr'" in capsys.readouterr().err
    assert main(["run", str(bad), "--resume", str(run)]) == 2
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "betaweighter" in capsys.readouterr().out


def test_cli_run_end_to_end(tmp_path, capsys):
    args = ["run", "configs/demo.yaml", "--out", str(tmp_path)]
    for item in TINY + ["train.epochs=1", "experiment.name=cli"]:
        args += ["--set", item]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 1 and (tmp_path / "cli" / "summary.json").is_file()


@pytest.mark.parametrize("method", ["dw", "l2rw", "nn", "weightnet", "heuristic", "random",
                                    "rotnet"])
def test_every_method_runs_from_one_config_key(method, tmp_path):
    cfg = load_config(overrides=TINY + [f"weights.method={method}", "train.epochs=1",
                                        "pruning.rule=threshold"])
    summary = Trainer(cfg, create_run_dir(tmp_path, method)).run()
    assert summary["method"] == method and 0.0 <= summary["test_accuracy"] <= 1.0
    weights = list(csv.DictReader(open(tmp_path / method / "weights.csv")))
    assert all(0.0 <= float(w["mean"]) <= 10.0 for w in weights)


def test_a_run_that_cannot_start_leaves_no_directory(tmp_path, capsys):
    args = ["run", "configs/stl10/bdw.yaml", "--out", str(tmp_path), "--set",
            f"data.root={tmp_path / 'nowhere'}"]
    assert main(args) == 2
    assert "stl10_binary" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_garbage_checkpoint_is_a_clear_error(finished, tmp_path):
    cfg, _, _ = finished
    run = create_run_dir(tmp_path, "tiny")
    Trainer(cfg, run).run(stop_after=1)
    (run / "checkpoints" / "last.pt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"last.pt cannot be read.*checkpoints/best.pt"):
        Trainer.resume(run)
