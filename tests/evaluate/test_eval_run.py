"""`evaluate`: config checks, every task end to end on a checkpoint, JSON beside it."""

import json
import math

import pytest
import yaml

from betaweighter.evaluate import ConfigError, evaluate, resolve_config, result_path
from betaweighter.evaluate.checkpoint import CheckpointError


@pytest.fixture
def run_dir(tmp_path, checkpoint_writer, tiny_convnet):
    checkpoint_writer(tmp_path / "run" / "checkpoints" / "best.pt", tiny_convnet)
    return tmp_path / "run"


def _classification(folders, **extra):
    return {"data": {k: str(v) for k, v in folders.items()}, "image_size": 16,
            "batch_size": 8, "num_workers": 0, "device": "cpu", **extra}


def test_linear_task_writes_its_result_beside_the_checkpoint(run_dir, colour_folders):
    out = evaluate(run_dir, "linear", _classification(colour_folders, c_values=[0.1, 10.0]))
    path = run_dir / "checkpoints" / "eval_linear.json"
    assert path == result_path(run_dir, "linear")
    saved = json.loads(path.read_text())
    assert saved["result"]["top1"] == out["result"]["top1"] >= 0.8
    assert saved["checkpoint"].endswith("best.pt") and saved["task"] == "linear"
    assert saved["config"]["metric"] == "top1" and saved["result"]["n_test"] == 15
    assert "ece_temperature_scaled" in saved["result"]["calibration"]
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []
    assert len(list((path.parent / "feature_cache").glob("*.npy"))) == 6


def test_fewshot_task_with_a_saved_episode_list(run_dir, colour_folders, tmp_path):
    cfg = _classification(colour_folders, way=3, shot=2, query=2, episodes=5,
                          episodes_file=str(tmp_path / "episodes.json"))
    first = evaluate(run_dir, "fewshot", cfg)["result"]
    assert (tmp_path / "episodes.json").is_file()
    assert first["pool_images"] == 24 + 12 + 15 and first["episodes"] == 5
    cfg["seed"] = 99  # the saved list wins over a new seed
    again = evaluate(run_dir, "fewshot", cfg)["result"]
    assert again["episode_accuracies"] == first["episode_accuracies"]


def test_finetune_task(run_dir, colour_folders):
    out = evaluate(run_dir, "finetune", _classification(
        colour_folders, steps=2, lrs=[0.01], weight_decays=[0.0, 1e-4]))["result"]
    assert len(out["grid"]) == 2 and 0.0 <= out["top1"] <= 1.0 and out["refit"]


def test_detection_task_coco_to_voc_from_a_yaml_file(tmp_path, checkpoint_writer, coco_writer,
                                                      voc_writer):
    ckpt = checkpoint_writer(tmp_path / "r18.pt", {"name": "resnet18", "num_classes": 4})
    coco_writer(tmp_path / "train", images=2, size=64, seed=0)
    voc_writer(tmp_path / "voc", {"a": [("green", 0, [3, 3, 20, 30])],
                                  "b": [("red", 1, [10, 2, 40, 12])]}, split="test")
    config = tmp_path / "det.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"train": {"format": "coco", "images": "train/images",
                           "annotations": "train/annotations.json"},
                 "test": {"format": "voc", "root": "voc", "split": "test"}},
        "images": 2, "batch_size": 2, "min_size": [64], "max_size": 96, "num_workers": 0,
        "device": "cpu", "trainable_layers": 5}))
    out = evaluate(ckpt, "detection", config)  # paths are relative to the YAML file
    result = json.loads((tmp_path / "eval_detection.json").read_text())["result"]
    assert result["training"]["iterations"] == 1 and out["result"]["trainable_layers"] == 5
    assert result["test_data"]["ignored_boxes"] == 1  # the "difficult" red box
    assert result["classes_without_ground_truth"] == ["red"]
    assert all(result[k] is None or math.isfinite(result[k]) for k in ("AP", "AP50", "AP75"))


def test_detection_refuses_a_convnet_checkpoint(run_dir, tmp_path):
    cfg = {"data": {"train": {"format": "voc", "root": str(tmp_path)},
                    "test": {"format": "voc", "root": str(tmp_path), "split": "test"}}}
    with pytest.raises(TypeError, match="needs a torchvision ResNet"):
        evaluate(run_dir, "detection", cfg, device="cpu")


def test_config_errors_name_the_key(colour_folders):
    data = {"data": {k: str(v) for k, v in colour_folders.items()}}
    with pytest.raises(ConfigError, match="unknown key 'shots' in the fewshot"):
        resolve_config("fewshot", {**data, "shots": 5})
    with pytest.raises(ConfigError, match="unknown key 'valid' in 'data'"):
        resolve_config("linear", {"data": {"train": "a", "test": "b", "valid": "c"}})
    with pytest.raises(ConfigError, match="'max_iter' .* must be a int"):
        resolve_config("linear", {**data, "max_iter": "many"})
    with pytest.raises(ConfigError, match="'classifier' .* must be one of"):
        resolve_config("fewshot", {**data, "classifier": "svm"})
    with pytest.raises(ConfigError, match="needs 'data'"):
        resolve_config("linear", None)
    with pytest.raises(ConfigError, match="'data.test' is required"):
        resolve_config("finetune", {"data": {"train": "a"}})
    with pytest.raises(ConfigError, match="unknown evaluation task"):
        resolve_config("segmentation", data)
    with pytest.raises(ConfigError, match=r"unknown key 'root' in 'data\.train' \(coco\)"):
        resolve_config("detection", {"data": {"train": {"format": "coco", "root": "x"},
                                              "test": {"format": "voc", "root": "y"}}})
    with pytest.raises(ConfigError, match="'format': 'coco' or 'voc'"):
        resolve_config("detection", {"data": {"train": {"images": "x"}, "test": {}}})


def test_data_problems_are_clear(run_dir, colour_folders, tmp_path, image_folder_writer):
    with pytest.raises(ValueError, match="data.test: image folder .* does not exist"):
        evaluate(run_dir, "linear", _classification(
            {"train": colour_folders["train"], "test": tmp_path / "nowhere"}))
    odd = image_folder_writer(tmp_path / "odd", {"red": 2, "green": 2})
    (odd / "purple").mkdir()
    with pytest.raises(ValueError, match=r"data.test: class folders \['purple'\]"):
        evaluate(run_dir, "linear", _classification(
            {"train": colour_folders["train"], "test": odd}))
    empty = image_folder_writer(tmp_path / "empty", {"red": 4, "green": 4})
    (empty / "blue").mkdir()
    with pytest.raises(ValueError, match=r"data.train: classes \['blue'\] have no images"):
        evaluate(run_dir, "linear", _classification({"train": empty, "test": empty}))
    # a test class without images is counted, not fatal
    out = evaluate(run_dir, "linear", _classification(
        {"train": colour_folders["train"], "test": empty}, c_values=[1.0]))["result"]
    assert out["data"]["test_classes_without_images"] == ["blue"]
    assert out["n_test"] == 8
    with pytest.raises(CheckpointError):
        evaluate(tmp_path / "no_run", "linear", _classification(colour_folders))


def test_the_command_line_runs_a_task_and_reports_bad_input(run_dir, colour_folders, tmp_path,
                                                            capsys):
    from betaweighter.cli import main

    config = tmp_path / "linear.yaml"
    config.write_text(yaml.safe_dump(_classification(colour_folders, c_values=[1.0])))
    assert main(["evaluate", str(run_dir), "--task", "linear", str(config)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["top1"] == json.loads(result_path(run_dir, "linear").read_text())["result"][
        "top1"]
    config.write_text("data: {train: x}\nimage_sizes: 3\n")
    assert main(["evaluate", str(run_dir), "--task", "linear", str(config)]) == 2
    assert "image_sizes" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nowhere"), "--task", "linear", str(config)]) == 2
