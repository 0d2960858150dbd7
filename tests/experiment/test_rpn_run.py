"""pretext.name: rpn as a YAML experiment: a run writes its pretext losses and a detector
initialisation, resumes, and `betaweighter evaluate --task detection` starts from it."""

import csv
import json

import pytest
import torch
import yaml
from helpers import one_thread  # noqa: F401 (a fixture)

from betaweighter.checkpoint import read_checkpoint
from betaweighter.data import write_shapes_voc
from betaweighter.errors import CheckpointError, ConfigError
from betaweighter.experiment.config import load_config
from betaweighter.experiment.evaluation import evaluate_checkpoint
from betaweighter.experiment.shipped import config_file
from betaweighter.experiment.trainer import Trainer

TINY_RPN = [
    "data.options={pool_images: 6, distractor_ratio: 0.5, image_size: 64, target_scenes: 30, "
    "detection_target_images: 3}",
    "train.epochs=2", "train.milestones=[1]", "train.max_steps_per_epoch=2",
    "train.batch_size=3", "meta.detection_batch=2", "pretext.options.boxes.topk=5",
]

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path, name="shapes/rpn-bdw.yaml", *extra):
    with config_file(name) as f:
        return load_config(f, TINY_RPN + [f"experiment.output_root={tmp_path}", *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("rpn_runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Trainer.start(_config(out)) as trainer:
            summary = trainer.run()
    finally:
        torch.set_num_threads(threads)
    return trainer.run_dir, summary


def test_a_weighted_rpn_run_writes_losses_plots_and_a_detector_init(finished):
    run, summary = finished
    assert summary["pretext"] == "rpn" and summary["method"] == "bdw"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 2
    for row in rows:
        assert float(row["pretext_objectness"]) > 0 and float(row["pretext_box_regression"]) >= 0
        assert float(row["meta_loss"]) > 0  # the detection meta objective ran
    assert (run / "plots" / "losses.png").is_file()
    ckpt = read_checkpoint(run / "checkpoints" / "best.pt")
    assert ckpt["epoch"] == 2  # selection by the probe is off: best is the last epoch
    init = ckpt["detector_init"]
    assert init["anchor_sizes"] == [32, 64, 128, 256, 512] and not init["train_trunk"]
    assert any(k.startswith("rpn.head.") for k in init["state"])


def test_an_interrupted_rpn_run_resumes_to_the_same_weights(tmp_path, finished):
    with Trainer.start(_config(tmp_path)) as trainer:
        assert trainer.run(stop_after=1) is None
    with Trainer.resume(trainer.run_dir) as again:
        again.run()
    a = read_checkpoint(finished[0] / "checkpoints" / "last.pt")["detector_init"]["state"]
    b = read_checkpoint(trainer.run_dir / "checkpoints" / "last.pt")["detector_init"]["state"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_detection_evaluation_starts_from_the_rpn(tmp_path, finished):
    run, _ = finished
    write_shapes_voc(tmp_path / "voc", images=10, size=64, seed=0, split="trainval")
    write_shapes_voc(tmp_path / "voc", images=2, size=64, seed=1, split="test", start=10)
    section = {"init": "rpn", "protocol": "label_scarce", "fractions": [0.2], "seeds": [0],
               "images": 2, "min_size": [64], "max_size": 64, "score_threshold": 0.0,
               "data": {"train": {"format": "voc", "root": "voc"},
                        "test": {"format": "voc", "root": "voc", "split": "test"}}}
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"evaluate": {"detection": section}}))
    out = evaluate_checkpoint(run, "detection", cfg, device="cpu")
    saved = json.loads((run / "checkpoints" / "eval_detection.json").read_text())
    result = saved["result"]
    assert result["init"]["fresh"] == ["roi_heads.box_head", "roi_heads.box_predictor"]
    assert result["results"]["20%"]["runs"][0]["images"] == 2
    assert out["config"]["anchor_sizes"] == [32, 64, 128, 256, 512]
    # a checkpoint without a detector initialisation cannot start init: rpn
    ckpt = read_checkpoint(run / "checkpoints" / "best.pt")
    plain = tmp_path / "plain.pt"
    torch.save({k: ckpt[k] for k in ("model", "model_config", "data_config")}, plain)
    with pytest.raises(CheckpointError, match="holds no detector initialisation"):
        evaluate_checkpoint(plain, "detection", cfg, device="cpu")
    # anchors that differ from the checkpoint's
    with pytest.raises(CheckpointError, match="anchors of sizes"):
        evaluate_checkpoint(run, "detection", cfg,
                            ["evaluate.detection.anchor_sizes=[16, 32, 64, 128, 256]"],
                            device="cpu")


def test_rpn_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="'model.name': pretext rpn needs a ResNet"):
        Trainer.start(_config(tmp_path, "shapes/rpn.yaml", "model.name=convnet"))
    with pytest.raises(ConfigError, match="unknown config key 'pretext.options.trunk'"):
        Trainer.start(_config(tmp_path, "shapes/rpn.yaml", "pretext.options.trunk=true"))
    with pytest.raises(ConfigError, match="detection objective needs a model with a box loss"):
        Trainer.start(_config(tmp_path, "shapes/rotation.yaml", "meta.objective=detection",
                              "pretext.options={}"))
    with pytest.raises(ConfigError, match=r"'evaluate.detection.fractions\[0\]'"):
        load_config(overrides=["evaluate.detection.fractions=[1.5]"])
    assert list(tmp_path.iterdir()) == []  # nothing started


def test_few_shot_detection_from_yaml(tmp_path, finished):
    write_shapes_voc(tmp_path / "voc", images=12, size=64, seed=0, split="trainval")
    write_shapes_voc(tmp_path / "voc", images=2, size=64, seed=1, split="test", start=12)
    section = {"init": "rpn", "protocol": "few_shot", "seeds": [0], "images": 2,
               "min_size": [64], "max_size": 64,
               "few_shot": {"novel_classes": ["triangle"], "shots": [1], "finetune": "direct"},
               "data": {"train": {"format": "voc", "root": "voc"},
                        "test": {"format": "voc", "root": "voc", "split": "test"}}}
    cfg = tmp_path / "fewshot.yaml"
    cfg.write_text(yaml.safe_dump({"evaluate": {"detection": section}}))
    result = evaluate_checkpoint(finished[0], "detection", cfg, device="cpu")["result"]
    assert result["novel_classes"] == ["triangle"] and result["finetune"] == "direct"
    assert result["init"]["fresh"] == ["roi_heads.box_head", "roi_heads.box_predictor"]
    assert set(result["results"]["1-shot"]) >= {"nAP", "nAP_std", "bAP", "runs"}
    with pytest.raises(ConfigError, match="few_shot.split"):
        evaluate_checkpoint(finished[0], "detection", cfg,
                            ["evaluate.detection.few_shot.split=4"], device="cpu")
