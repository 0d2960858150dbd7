"""`betaweighter evaluate`: the evaluate.<task> config sections, every task end to end on a
checkpoint, the result beside it, and one clear error for bad input."""

import json
import math

import pytest
import torch
import yaml

from betaweighter.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DatasetNotFoundError,
)
from betaweighter.experiment.evaluation import evaluate_checkpoint, result_path
from betaweighter.models import build_model


@pytest.fixture
def run_dir(tmp_path, tiny_convnet_config):
    """A run directory whose best.pt records 16 px inputs and their normalisation."""
    torch.manual_seed(0)
    model = build_model(**tiny_convnet_config)
    path = tmp_path / "run" / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "model_config": tiny_convnet_config,
                "data_config": {"image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}},
               path)
    return tmp_path / "run"


def _config(tmp_path, task, folders=None, name="eval.yaml", **options):
    section = dict(options)
    if folders is not None:
        section["data"] = {k: str(v) for k, v in folders.items()}
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"evaluate": {task: section}}))
    return path


def test_linear_task_writes_its_result_beside_the_checkpoint(run_dir, colour_folders, tmp_path):
    out = evaluate_checkpoint(run_dir, "linear", _config(tmp_path, "linear", colour_folders,
                                                         c_values=[0.1, 10.0], batch_size=8),
                              device="cpu")
    path = run_dir / "checkpoints" / "eval_linear.json"
    assert path == result_path(run_dir, "linear")
    saved = json.loads(path.read_text())
    assert saved["result"]["top1"] == out["result"]["top1"] >= 0.8
    assert saved["checkpoint"].endswith("best.pt") and saved["task"] == "linear"
    # input defaults come from the checkpoint's data_config
    assert saved["config"]["image_size"] == 16 and saved["config"]["mean"] == [0.5] * 3
    assert saved["result"]["n_test"] == 15 and saved["result"]["n_val"] == 12
    assert "ece_temperature_scaled" in saved["result"]["calibration"]
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []
    assert len(list((path.parent / "feature_cache").glob("*.npy"))) == 6


def test_fewshot_task_with_a_saved_episode_list(run_dir, colour_folders, tmp_path):
    cfg = _config(tmp_path, "fewshot", colour_folders, way=3, shot=2, query=2, episodes=5,
                  episodes_file="episodes.json")
    first = evaluate_checkpoint(run_dir, "fewshot", cfg, device="cpu")["result"]
    assert (tmp_path / "episodes.json").is_file()  # relative to the config file
    assert first["pool_images"] == 24 + 12 + 15 and first["episodes"] == 5
    again = evaluate_checkpoint(run_dir, "fewshot", cfg, ["evaluate.fewshot.seed=99"],
                                device="cpu")["result"]
    assert again["episode_accuracies"] == first["episode_accuracies"]  # the saved list wins


def test_finetune_task(run_dir, colour_folders, tmp_path):
    out = evaluate_checkpoint(run_dir, "finetune", _config(
        tmp_path, "finetune", colour_folders, steps=2, lrs=[0.01], weight_decays=[0.0, 1e-4],
        batch_size=8), device="cpu")["result"]
    assert [g["weight_decay"] for g in out["grid"]] == [0.0, 1e-4] and out["refit"]
    assert out["n_test"] == 15


def test_detection_task_coco_to_voc_from_a_yaml_file(tmp_path, checkpoint_writer, coco_writer,
                                                      voc_writer):
    ckpt = checkpoint_writer(tmp_path / "r18.pt", {"name": "resnet18", "num_classes": 4})
    coco_writer(tmp_path / "train", images=2, size=64, seed=0)
    voc_writer(tmp_path / "voc", {"a": [("green", 0, [3, 3, 20, 30])],
                                  "b": [("red", 1, [10, 2, 40, 12])]}, split="test")
    config = _config(tmp_path, "detection", None, images=2, batch_size=2, min_size=[64],
                     max_size=96, trainable_layers=5,
                     data={"train": {"format": "coco", "images": "train/images",
                                     "annotations": "train/annotations.json"},
                           "test": {"format": "voc", "root": "voc", "split": "test"}})
    out = evaluate_checkpoint(ckpt, "detection", config, device="cpu")
    result = json.loads((tmp_path / "eval_detection.json").read_text())["result"]
    assert result["training"]["iterations"] == 1 and out["result"]["trainable_layers"] == 5
    assert result["test_data"]["ignored_boxes"] == 1  # the "difficult" red box
    assert result["classes_without_ground_truth"] == ["red"]
    assert all(result[k] is None or math.isfinite(result[k]) for k in ("AP", "AP50", "AP75"))


def test_detection_refuses_a_convnet_checkpoint(run_dir, tmp_path):
    cfg = _config(tmp_path, "detection", None,
                  data={"train": {"format": "voc", "root": "."},
                        "test": {"format": "voc", "root": ".", "split": "test"}})
    with pytest.raises(ConfigError, match="needs a torchvision ResNet"):
        evaluate_checkpoint(run_dir, "detection", cfg, device="cpu")


def test_config_errors_name_the_key(run_dir, colour_folders, tmp_path):
    def fails(match, task="linear", **options):
        with pytest.raises(ConfigError, match=match):
            evaluate_checkpoint(run_dir, task, _config(tmp_path, task, **options), device="cpu")

    fails("unknown config key 'evaluate.fewshot.shots'", "fewshot", folders=colour_folders,
          shots=5)
    fails("unknown config key 'evaluate.linear.data.valid'",
          data={"train": "a", "test": "b", "valid": "c"})
    fails("'evaluate.linear.max_iter': expected an integer", folders=colour_folders,
          max_iter="many")
    fails("'evaluate.fewshot.classifier': expected one of", "fewshot", folders=colour_folders,
          classifier="svm")
    fails("'evaluate.linear.data.train' is required")
    fails("'evaluate.finetune.data.test' is required", "finetune", data={"train": "a"})
    fails(r"'evaluate.detection.data.train' \(coco\): unknown keys \['root'\]", "detection",
          data={"train": {"format": "coco", "root": "x"}, "test": {"format": "voc",
                                                                   "root": "y"}})
    fails("needs format: coco or voc", "detection",
          data={"train": {"images": "x"}, "test": {"format": "voc", "root": "y"}})
    with pytest.raises(ConfigError, match="unknown evaluation task"):
        evaluate_checkpoint(run_dir, "depth")


def test_data_problems_are_clear(run_dir, colour_folders, tmp_path, image_folder_writer):
    def run(folders, name, **options):
        return evaluate_checkpoint(run_dir, "linear", _config(
            tmp_path, "linear", folders, name=name, c_values=[1.0], **options), device="cpu")

    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        run({"train": colour_folders["train"], "test": tmp_path / "nowhere"}, "a.yaml")
    odd = image_folder_writer(tmp_path / "odd", {"red": 2, "green": 2})
    (odd / "purple").mkdir()
    with pytest.raises(DataError, match=r"class folders \['purple'\] are not among"):
        run({"train": colour_folders["train"], "test": odd}, "b.yaml")
    empty = image_folder_writer(tmp_path / "empty", {"red": 4, "green": 4})
    (empty / "blue").mkdir()
    with pytest.raises(DataError, match=r"class folders \['blue'\] hold no images"):
        run({"train": empty, "test": empty}, "c.yaml")
    # a test class without images is counted, not fatal
    out = run({"train": colour_folders["train"], "test": empty}, "d.yaml")["result"]
    assert out["data"]["test_classes_without_images"] == ["blue"] and out["n_test"] == 8
    with pytest.raises(CheckpointError):
        evaluate_checkpoint(tmp_path / "no_run", "linear",
                            _config(tmp_path, "linear", colour_folders))


def test_the_command_line_runs_a_task_and_reports_bad_input(run_dir, colour_folders, tmp_path,
                                                            capsys):
    from betaweighter.cli import main

    config = _config(tmp_path, "linear", colour_folders, c_values=[1.0])
    assert main(["evaluate", str(run_dir), "--task", "linear", str(config), "--device",
                 "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["top1"] == json.loads(result_path(run_dir, "linear").read_text())[
        "result"]["top1"]
    config.write_text("evaluate:\n  linear:\n    data: {train: x}\n    image_sizes: 3\n")
    assert main(["evaluate", str(run_dir), "--task", "linear", str(config)]) == 2
    err = capsys.readouterr().err
    assert "image_sizes" in err and err.count("\n") == 1
