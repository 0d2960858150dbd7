"""`betaweighter invariance` and fused `betaweighter evaluate`: files beside the checkpoint,
the run's own test split, and one clear error for each bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml
from helpers import TINY
from ondisk import write_view_groups

from betaweighter.cli import main
from betaweighter.errors import ConfigError
from betaweighter.experiment.config import load_config
from betaweighter.experiment.evaluation import evaluate_checkpoint, result_path
from betaweighter.experiment.trainer import Trainer
from betaweighter.models import build_model

QUICK = ["--set", "evaluate.invariance.k=4", "--set", "evaluate.invariance.num_images=12",
         "--set", "evaluate.invariance.transforms=[rotation, h_flip, hue]", "--device", "cpu"]
INVARIANCE_FILES = ["invariance.csv", "invariance_summary.csv", "invariance_curves.png",
                    "invariance_bar.png", "eval_invariance.json"]


AUGMENTED = ["pretext.augment=appearance", "pruning.enabled=false"]


@pytest.fixture(scope="module")
def augmented_run(tmp_path_factory):
    """A tiny demo run pre-trained with the appearance preset."""
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(overrides=TINY + [f"experiment.output_root={out}", *AUGMENTED])
    with Trainer.start(cfg) as trainer:
        trainer.run()
    return trainer.run_dir


def _metrics(run):
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]


def test_an_augmented_run_resumes_exactly(augmented_run, tmp_path):
    cfg = load_config(overrides=TINY + [f"experiment.output_root={tmp_path}", *AUGMENTED])
    with Trainer.start(cfg) as trainer:
        assert trainer.run(stop_after=1) is None  # "killed" after epoch 1
        other = trainer.run_dir
    with Trainer.resume(other) as trainer:
        trainer.run()
    assert _metrics(other) == _metrics(augmented_run)
    plain = load_config(overrides=TINY + [f"experiment.output_root={tmp_path}",
                                          "pruning.enabled=false"])
    with Trainer.start(plain) as trainer:
        trainer.run(stop_after=1)
        first = _metrics(trainer.run_dir)[0]
    assert first["train_loss"] != _metrics(augmented_run)[0]["train_loss"]  # it did augment


def _checkpoint(path, seed, size=16, mean=0.5):
    torch.manual_seed(seed)
    config = {"name": "convnet", "num_classes": 4, "width": 4 + seed, "blocks": 2}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": build_model(**config).state_dict(), "model_config": config,
                "data_config": {"image_size": size, "mean": [mean] * 3, "std": [0.25] * 3}},
               path)
    return path


def test_invariance_of_a_run_on_its_own_test_split(augmented_run, capsys):
    assert "augment: appearance" in (augmented_run / "config.yaml").read_text()
    assert main(["invariance", str(augmented_run), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "rotation" in printed and "hue" in printed
    folder = augmented_run / "checkpoints"
    for name in INVARIANCE_FILES:
        assert (folder / name).is_file(), name
    rows = list(csv.DictReader(open(folder / "invariance.csv")))
    assert {r["transform"] for r in rows} == {"rotation", "h_flip", "hue"}
    assert all(int(r["count"]) == 12 for r in rows)
    payload = json.loads((folder / "eval_invariance.json").read_text())
    assert payload["config"]["image_size"] == 32 and payload["result"]["protocol"] == "v2"
    assert payload["result"]["stats"]["count"] > 200  # the demo test split


def test_invariance_of_a_checkpoint_with_folders_and_views(tmp_path, colour_folders):
    ckpt = _checkpoint(tmp_path / "m.pt", 0)
    views = write_view_groups(tmp_path / "views", {"a": 3, "b": 4}, size=16)
    config = tmp_path / "inv.yaml"
    config.write_text(yaml.safe_dump({"evaluate": {"invariance": {
        "data": {"images": str(colour_folders["train"]), "views": str(views)},
        "transforms": ["blur"], "k": 3, "num_images": 5, "protocol": "paper",
        "shrinkage": 0.2}}}))
    out = evaluate_checkpoint(ckpt, "invariance", config, device="cpu")["result"]
    assert [r["transform"] for r in out["summary"]] == ["blur"]
    assert out["views"]["params"] == 2 and (tmp_path / "invariance_views.csv").is_file()
    with pytest.raises(ConfigError, match="'evaluate.invariance.data.images' is required"):
        evaluate_checkpoint(ckpt, "invariance", device="cpu")


def test_too_small_a_reference_set_is_said_once(tmp_path, colour_folders, capsys):
    ckpt = _checkpoint(tmp_path / "m.pt", 4)  # 8-d features, 24 images: fine
    few = tmp_path / "few"
    (few / "x").mkdir(parents=True)
    for i, p in enumerate(sorted((colour_folders["val"] / "red").iterdir())[:3]):
        (few / "x" / f"{i}{p.suffix}").write_bytes(p.read_bytes())
    args = ["invariance", str(ckpt), "--set", f"evaluate.invariance.data.images={few}",
            "--set", "evaluate.invariance.transforms=[h_flip]", "--device", "cpu"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("too few for a covariance") == 1 and "Ledoit-Wolf" in err


def test_evaluate_fuses_several_checkpoints(tmp_path, colour_folders, capsys):
    a = _checkpoint(tmp_path / "a" / "best.pt", 0)
    b = _checkpoint(tmp_path / "b" / "best.pt", 1)
    config = tmp_path / "lin.yaml"
    config.write_text(yaml.safe_dump({"evaluate": {"linear": {
        "data": {k: str(v) for k, v in colour_folders.items()}, "c_values": [1.0]}}}))
    assert main(["evaluate", str(a), str(b), "--task", "linear", str(config), "--device",
                 "cpu"]) == 0
    path = result_path([a, b], "linear")
    assert path.parent == a.parent and path.name.startswith("eval_linear_fused-")
    payload = json.loads(path.read_text())
    assert payload["result"]["feature_dim"] == 4 + 5 and payload["fusion_mode"] == "cat"
    assert payload["checkpoints"] == [str(a), str(b)]
    assert not (a.parent / "eval_linear.json").exists()
    capsys.readouterr()
    assert main(["evaluate", str(a), str(b), str(config), "--task", "detection"]) == 2
    assert "cannot evaluate a fusion" in capsys.readouterr().err
    c = _checkpoint(tmp_path / "c" / "best.pt", 2, mean=0.4)
    assert main(["evaluate", str(a), str(c), "--task", "linear", str(config)]) == 2
    assert "normalised with mean" in capsys.readouterr().err
