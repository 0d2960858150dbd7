"""`evaluate`: one transfer task on one checkpoint, result written beside the checkpoint.

This is what ``betaweighter evaluate CHECKPOINT_OR_RUN_DIR --task TASK [CONFIG]`` calls. It
checks the config before loading anything, loads the backbone strictly, runs the task and
writes ``<checkpoint folder>/eval_<task>.json`` atomically (temporary file, then
``os.replace``), so a crash never leaves a truncated result.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch
import torchvision

from betaweighter.evaluate._runtime import resolve_device, write_json_atomic
from betaweighter.evaluate.checkpoint import load_backbone, resolve_checkpoint
from betaweighter.evaluate.config import resolve_config
from betaweighter.evaluate.detection import detection, resnet_trunk
from betaweighter.evaluate.detection_data import (
    DetectionDataset,
    concat_detection,
    load_coco,
    load_voc,
)
from betaweighter.evaluate.features import extract_features
from betaweighter.evaluate.fewshot import Episodes, fit_fewshot, make_episodes
from betaweighter.evaluate.finetune import finetune
from betaweighter.evaluate.image_folders import image_folder_splits, pooled_folders
from betaweighter.evaluate.linear import linear_probe
from betaweighter.models import Backbone


def result_path(checkpoint: str | Path, task: str) -> Path:
    """Where `evaluate` writes the result of `task` for this checkpoint or run directory."""
    return resolve_checkpoint(checkpoint).parent / f"eval_{task}.json"


def evaluate(path_or_run_dir: str | Path, task: str,
             config: Mapping[str, Any] | str | Path | None = None, *,
             device: str | torch.device | None = None,
             weights_only: bool = True) -> dict[str, Any]:
    """Run transfer task `task` ("linear", "fewshot", "finetune" or "detection") on the
    backbone of a checkpoint (or of a run directory's ``checkpoints/best.pt``).

    `config` is a dict or a YAML/JSON file (keys: `betaweighter.evaluate.config.DEFAULTS`
    and the README); `device` overrides its ``device`` key (default: GPU when present).
    Returns the payload written to ``eval_<task>.json``: ``task``, ``checkpoint``,
    ``result`` (the task's numbers), the resolved ``config``, ``device``, ``seconds``
    and library ``versions``.
    """
    checkpoint = resolve_checkpoint(path_or_run_dir)
    cfg = resolve_config(task, config)
    device = resolve_device(device if device is not None else cfg["device"])
    start = time.perf_counter()
    model = load_backbone(checkpoint, device, weights_only=weights_only)
    result = _TASKS[task](model, cfg, checkpoint.parent, device)
    payload = {
        "task": task, "checkpoint": str(checkpoint), "result": result, "config": cfg,
        "device": str(device), "seconds": time.perf_counter() - start,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "scikit-learn": sklearn.__version__, "numpy": np.__version__},
    }
    write_json_atomic(checkpoint.parent / f"eval_{task}.json", payload)
    return payload


def _splits(cfg: dict[str, Any]) -> dict[str, Any]:
    data = cfg["data"]
    return image_folder_splits(data["train"], data["test"], data["val"],
                               val_fraction=data["val_fraction"], seed=cfg["seed"],
                               image_size=cfg["image_size"], mean=cfg["mean"], std=cfg["std"])


def _linear(model: Backbone, cfg: dict[str, Any], folder: Path,
            device: torch.device) -> dict[str, Any]:
    s = _splits(cfg)
    result = linear_probe(model, s["train"], s["val"], s["test"], batch_size=cfg["batch_size"],
                          num_workers=cfg["num_workers"], device=device,
                          cache_dir=folder / "feature_cache" if cfg["cache_features"] else None,
                          c_values=cfg["c_values"], metric=cfg["metric"],
                          max_iter=cfg["max_iter"], standardize=cfg["standardize"],
                          calibration_bins=cfg["calibration_bins"])
    return {**result, "data": s["report"], "classes": s["classes"]}


def _fewshot(model: Backbone, cfg: dict[str, Any], folder: Path,
             device: torch.device) -> dict[str, Any]:
    data = cfg["data"]
    unknown = sorted(set(cfg["splits"]) - {"train", "val", "test"})
    if unknown:
        raise ValueError(f"'splits' may only name train, val and test, got {unknown}")
    roots = [data[s] for s in cfg["splits"] if data[s] is not None]
    if not roots:
        raise ValueError(f"none of the few-shot 'splits' {cfg['splits']} has a folder in 'data'")
    pool, classes = pooled_folders(roots, image_size=cfg["image_size"], mean=cfg["mean"],
                                   std=cfg["std"])
    features, labels = extract_features(
        model, pool, batch_size=cfg["batch_size"], num_workers=cfg["num_workers"],
        device=device, cache_dir=folder / "feature_cache" if cfg["cache_features"] else None,
        name="fewshot")
    file = Path(cfg["episodes_file"]) if cfg["episodes_file"] else None
    if file is not None and file.is_file():
        episodes = Episodes.load(file)
    else:
        episodes = make_episodes(labels, cfg["way"], cfg["shot"], cfg["query"],
                                 cfg["episodes"], cfg["seed"])
        if file is not None:
            episodes.save(file)
    result = fit_fewshot(features, labels, episodes, classifier=cfg["classifier"],
                         logistic_c=cfg["logistic_c"], feature_norm=cfg["feature_norm"])
    return {**result, "pool_images": int(labels.size), "pool_classes": len(classes)}


def _finetune(model: Backbone, cfg: dict[str, Any], folder: Path,
              device: torch.device) -> dict[str, Any]:
    s = _splits(cfg)
    result = finetune(model, s["train_augmented"], s["val"], s["test"],
                      num_classes=len(s["classes"]), lrs=cfg["lrs"],
                      weight_decays=cfg["weight_decays"], steps=cfg["steps"],
                      optimizer=cfg["optimizer"], batch_size=cfg["batch_size"],
                      momentum=cfg["momentum"], metric=cfg["metric"], refit=cfg["refit"],
                      trainval_set=s["trainval_augmented"], num_workers=cfg["num_workers"],
                      device=device, seed=cfg["seed"])
    return {**result, "data": s["report"], "classes": s["classes"]}


def _detection(model: Backbone, cfg: dict[str, Any], folder: Path,
               device: torch.device) -> dict[str, Any]:
    resnet_trunk(model)  # a clear error before any data is read
    data = cfg["data"]
    first = _load_source(data["train"][0], None, data["on_bad_box"], cfg["hflip"])
    train = concat_detection([first] + [_load_source(s, first.classes, data["on_bad_box"],
                                                     cfg["hflip"]) for s in data["train"][1:]])
    test = concat_detection([_load_source(s, train.classes, data["on_bad_box"], False)
                             for s in data["test"]])
    return detection(model, train, test, trainable_layers=cfg["trainable_layers"],
                     images=cfg["images"], batch_size=cfg["batch_size"],
                     min_size=cfg["min_size"], max_size=cfg["max_size"],
                     image_mean=cfg["mean"], image_std=cfg["std"],
                     score_threshold=cfg["score_threshold"],
                     detections_per_image=cfg["detections_per_image"],
                     num_workers=cfg["num_workers"], device=device, seed=cfg["seed"],
                     lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"],
                     warmup_images=cfg["warmup_images"], lr_steps=cfg["lr_steps"])


def _load_source(source: dict[str, Any], classes: list[str] | None, on_bad_box: str,
                 hflip: bool) -> DetectionDataset:
    if source["format"] == "coco":
        return load_coco(source["images"], source["annotations"], classes=classes,
                         on_bad_box=on_bad_box, hflip=hflip)
    return load_voc(source["root"], source["split"], classes=classes, on_bad_box=on_bad_box,
                    hflip=hflip)


_TASKS = {"linear": _linear, "fewshot": _fewshot, "finetune": _finetune,
          "detection": _detection}
