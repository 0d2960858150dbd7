"""The dense transfer tasks of ``betaweighter evaluate``: ``segmentation`` (semantic) and
``instance_segmentation`` (Mask R-CNN), run from the ``evaluate.segmentation`` and
``evaluate.instance_segmentation`` sections of a config.

Each runner takes the loaded backbone, the task's options (a dict of its section, input
size and normalisation already filled from the checkpoint), the checkpoint's folder and
the device, checks what a user can get wrong (the backbone, the data keys, the data
itself) with one clear error before training, and returns the evaluator's result.
`experiment/evaluation.py` dispatches to them through `DENSE_TASKS`, and checks a
section's data keys with `check_dense_data` before any model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from betaweighter.checkpoint import read_checkpoint
from betaweighter.data.detection import load_coco
from betaweighter.data.segmentation import (
    VOC_SEGMENTATION_CLASSES,
    SegmentationDataset,
    load_mask_folder,
    load_voc_segmentation,
)
from betaweighter.errors import CheckpointError, ConfigError
from betaweighter.evaluate.dense import spatial_trunk
from betaweighter.evaluate.detection import resnet_trunk
from betaweighter.evaluate.instance_segmentation import evaluate_instance_segmentation
from betaweighter.evaluate.segmentation import evaluate_segmentation
from betaweighter.experiment.tasks import InstanceSegmentationTask, SegmentationTask
from betaweighter.models import Backbone
from betaweighter.pretext.rpn import ANCHOR_SIZES, ASPECT_RATIOS

__all__ = ["DENSE_TASKS", "check_dense_data", "detector_init", "require_resnet"]

_SEG = "evaluate.segmentation"
_INST = "evaluate.instance_segmentation"
_DEFAULTS = {"year": 2012, "train_split": "train", "test_split": "val"}  # voc keys' defaults


def _segmentation(model: Backbone, o: dict[str, Any], folder: Path,
                  device: torch.device) -> dict[str, Any]:
    try:
        spatial_trunk(model, o["output_stride"])
    except TypeError as e:
        raise ConfigError(f"--task segmentation: {e}") from None
    except ValueError as e:
        raise ConfigError(f"config key '{_SEG}.output_stride': {e}") from None
    lo_hi = o["scale_range"]
    if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
        raise ConfigError(f"config key '{_SEG}.scale_range': two factors 0 < low <= high "
                          f"(e.g. [0.5, 2.0]), got {lo_hi}")
    check_dense_data("segmentation", o["data"])
    train, test = _segmentation_sets(o["data"])
    return evaluate_segmentation(
        model, train, test, head=o["head"], backbone_mode=o["backbone"],
        output_stride=o["output_stride"], batchnorm=o["batchnorm"], crop_size=o["image_size"],
        scale_range=lo_hi, hflip=o["hflip"], test_size=o["test_size"], mean=o["mean"],
        std=o["std"], images=o["images"], batch_size=o["batch_size"],
        num_workers=o["num_workers"], device=device, seed=o["seed"], lr=o["lr"],
        momentum=o["momentum"], weight_decay=o["weight_decay"], poly_power=o["poly_power"])


def check_dense_data(task: str, d: dict[str, Any]) -> None:
    """Refuse a dense task's ``data`` section that lacks a required key or mixes the keys
    of two formats, naming the key (nothing is read)."""
    if task == "instance_segmentation":
        for split in ("train", "test"):
            for key in ("images", "annotations"):
                if not d[split][key]:
                    raise ConfigError(
                        f"config key '{_INST}.data.{split}.{key}' is required: a COCO set is "
                        "{images: DIR, annotations: FILE.json} with a 'segmentation' "
                        "(polygons or RLE) in every annotation")
        return
    own = {"voc": ("root", "year", "train_split", "test_split"), "folders": ("train", "test")}
    other = "folders" if d["format"] == "voc" else "voc"
    stray = [k for k in own[other] if d[k] not in (None, _DEFAULTS.get(k))]
    if stray:
        raise ConfigError(f"config key '{_SEG}.data': {stray} belong to format {other}, not "
                          f"{d['format']}; a {d['format']} set takes {list(own[d['format']])} "
                          "and classes")
    if d["format"] == "voc" and not d["root"]:
        raise ConfigError(f"config key '{_SEG}.data.root' is required for format voc: the "
                          "folder holding VOCdevkit/ (or VOCdevkit/VOC2012 itself)")
    for key in ("train", "test", "classes") if d["format"] == "folders" else ():
        if not d[key]:
            raise ConfigError(
                f"config key '{_SEG}.data.{key}' is required for format folders: "
                + ("a folder holding images/ and masks/" if key != "classes" else
                   "one class name per mask value 0..K-1 (255 = ignore)"))


def _segmentation_sets(d: dict[str, Any]) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The train and test sets of an ``evaluate.segmentation.data`` section."""
    if d["format"] == "voc":
        classes = d["classes"] or list(VOC_SEGMENTATION_CLASSES)
        return (load_voc_segmentation(d["root"], d["train_split"], d["year"], classes),
                load_voc_segmentation(d["root"], d["test_split"], d["year"], classes))
    return load_mask_folder(d["train"], d["classes"]), load_mask_folder(d["test"], d["classes"])


def _instance_segmentation(model: Backbone, o: dict[str, Any], folder: Path,
                           device: torch.device) -> dict[str, Any]:
    require_resnet(model, "instance_segmentation")
    d = o["data"]
    check_dense_data("instance_segmentation", d)
    if o["anchor_sizes"] is not None and len(o["anchor_sizes"]) != 5:
        raise ConfigError(f"config key '{_INST}.anchor_sizes': one size per pyramid level (5 "
                          f"values), got {o['anchor_sizes']}")
    train = load_coco(d["train"]["images"], d["train"]["annotations"],
                      on_bad_box=d["on_bad_box"], hflip=o["hflip"], masks=True)
    test = load_coco(d["test"]["images"], d["test"]["annotations"], classes=train.classes,
                     on_bad_box=d["on_bad_box"], masks=True)
    init = detector_init(o, "instance_segmentation")
    o["anchor_sizes"] = o["anchor_sizes"] or (init["anchor_sizes"] if init
                                              else list(ANCHOR_SIZES))
    o["aspect_ratios"] = o["aspect_ratios"] or (init["aspect_ratios"] if init
                                                else list(ASPECT_RATIOS))
    return evaluate_instance_segmentation(
        model, train, test, trainable_layers=o["trainable_layers"], images=o["images"],
        batch_size=o["batch_size"], min_size=o["min_size"], max_size=o["max_size"],
        image_mean=o["mean"], image_std=o["std"], score_threshold=o["score_threshold"],
        detections_per_image=o["detections_per_image"], mask_threshold=o["mask_threshold"],
        rois_per_image=o["rois_per_image"],
        num_workers=o["num_workers"], device=device, seed=o["seed"], detector_init=init,
        anchor_sizes=o["anchor_sizes"], aspect_ratios=o["aspect_ratios"], lr=o["lr"],
        momentum=o["momentum"], weight_decay=o["weight_decay"],
        warmup_images=o["warmup_images"], lr_steps=o["lr_steps"])


def detector_init(o: dict[str, Any], task: str) -> dict[str, Any] | None:
    """The checkpoint's ``detector_init`` for ``init: rpn`` (None for ``init: backbone``),
    for the detector-based tasks (`task`: detection, instance_segmentation)."""
    if o["init"] != "rpn":
        return None
    path = o["checkpoint"]
    init = read_checkpoint(path).get("detector_init")
    if not isinstance(init, dict) or "state" not in init:
        raise CheckpointError(f"checkpoint {path} holds no detector initialisation (it was not "
                              f"written by RPN pre-training, pretext.name: rpn): use "
                              f"evaluate.{task}.init: backbone, or an RPN run's checkpoint")
    return init


def require_resnet(model: Backbone, task: str) -> None:
    """Refuse, in one line, a backbone a detector cannot be built on (not a ResNet)."""
    try:
        resnet_trunk(model)
    except TypeError as e:
        raise ConfigError(f"--task {task}: {e}") from None


#: The dense tasks' runners, by the section class that configures each.
DENSE_TASKS = {SegmentationTask: _segmentation, InstanceSegmentationTask: _instance_segmentation}
