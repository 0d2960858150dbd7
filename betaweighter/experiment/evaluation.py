"""``betaweighter evaluate``: one transfer task on one checkpoint, or on the fusion of
several (arXiv:2111.11398), configured by the ``evaluate.<task>`` section of the config
schema, the result written beside the (first) checkpoint.

The image size and normalisation default to what the checkpoint was pre-trained with (its
``data_config``), so a backbone trained on 84 px STL-10 crops is evaluated on 84 px inputs
normalised the same way; a task section can override them. Relative data paths in a
config file are relative to that file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import sklearn
import torch
import torchvision

from betaweighter.checkpoint import resolve_checkpoint
from betaweighter.data.detection import DetectionDataset, concat_detection, load_coco, load_voc
from betaweighter.data.input_spec import InputSpec
from betaweighter.data.labelled import (
    labelled_folder_splits,
    pooled_folders,
    pooled_transfer,
    transfer_splits,
)
from betaweighter.errors import ConfigError
from betaweighter.evaluate.detection import evaluate_detection
from betaweighter.evaluate.detection_protocols import (
    evaluate_few_shot_detection,
    evaluate_label_scarce,
    novel_classes,
)
from betaweighter.evaluate.features import extract_features
from betaweighter.evaluate.fewshot import Episodes, fit_fewshot, make_episodes
from betaweighter.evaluate.finetune import evaluate_finetune
from betaweighter.evaluate.fusion import FUSION_MODES, FusedBackbone
from betaweighter.evaluate.linear import linear_probe
from betaweighter.experiment.config import Config, load_config
from betaweighter.experiment.dense_evaluation import (
    DENSE_TASKS,
    check_dense_data,
    detector_init,
    require_resnet,
)
from betaweighter.experiment.invariance import run_invariance
from betaweighter.experiment.outputs import output_folder
from betaweighter.experiment.sections import task_names, task_section
from betaweighter.experiment.tasks import DetectionTask, FewshotTask, FinetuneTask, LinearTask
from betaweighter.io import write_json
from betaweighter.models import Backbone, load_backbone
from betaweighter.pretext.rpn import ANCHOR_SIZES, ASPECT_RATIOS
from betaweighter.runtime import resolve_device

__all__ = ["TASKS", "check_task", "evaluate_checkpoint", "fusion_suffix", "result_path",
           "run_task"]

#: every task of ``betaweighter evaluate --task`` (the sections of ``evaluate``)
TASKS = task_names()
Checkpoints = str | os.PathLike | Sequence[str | os.PathLike]


def _resolve(paths: Checkpoints) -> list[Path]:
    given: list[str | os.PathLike] = ([paths] if isinstance(paths, (str, os.PathLike))
                                      else list(paths))
    found = [resolve_checkpoint(Path(p)) for p in given]
    if not found:
        raise ConfigError("no checkpoint given: pass a checkpoint file or a run directory")
    return found


def fusion_suffix(checkpoints: Sequence[Path], mode: str = "cat") -> str:
    """``""`` for one checkpoint; ``"_fused-<digest>"`` naming a fusion of several (the
    digest covers the resolved member paths, in order, and the mode)."""
    if len(checkpoints) == 1:
        return ""
    key = "\n".join([mode, *(str(Path(c).resolve()) for c in checkpoints)])
    return "_fused-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def result_path(checkpoint: Checkpoints, task: str, fuse_mode: str = "cat") -> Path:
    """Where `evaluate_checkpoint` writes the result of `task` for this checkpoint or run
    (or, for several, their fusion: beside the first; in the user cache when that folder
    cannot be written, see `output_folder`)."""
    found = _resolve(checkpoint)
    return output_folder(found[0].parent) / f"eval_{task}{fusion_suffix(found, fuse_mode)}.json"


def evaluate_checkpoint(path_or_run_dir: Checkpoints, task: str,
                        config: str | Path | Config | None = None,
                        overrides: list[str] | None = None,
                        device: str | torch.device | None = None,
                        fuse_mode: str = "cat", format: str = "auto",
                        arch: str | None = None) -> dict[str, Any]:
    """Run transfer task `task` on the backbone of a checkpoint (a run directory means its
    ``best.pt``, else ``last.pt``) and write ``eval_<task>.json`` beside it. Returns the
    payload: ``task``, ``checkpoint``, ``result``, the resolved task ``config``,
    ``device``, ``seconds`` and library ``versions``.

    A list of several checkpoints is evaluated as their `FusedBackbone` (`fuse_mode`
    cat, add or mean); the payload then lists ``checkpoints`` and ``fusion_mode``, and
    goes to ``eval_<task>_fused-<digest>.json`` beside the first one. Detection refuses a
    fusion, and so does fine-tuning (the paper fuses frozen features only).

    `format` and `arch` say how to read published checkpoints (`load_backbone`); the
    payload's ``source`` records, per checkpoint, the format, the architecture and the
    heads dropped.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown evaluation task {task!r}; choose one of {TASKS}")
    if fuse_mode not in FUSION_MODES:
        raise ConfigError(f"unknown fusion mode {fuse_mode!r}; choose one of {FUSION_MODES}")
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    options = dataclasses.asdict(getattr(cfg.evaluate, task))
    checkpoints = _resolve(path_or_run_dir)
    suffix = fusion_suffix(checkpoints, fuse_mode)
    if suffix and task in ("detection", "finetune"):
        raise ConfigError(_REFUSED[task])
    _check_data(task, options["data"])
    device = resolve_device(device, key="--device")
    start = time.perf_counter()
    members = [load_backbone(c, device, format=format, arch=arch) for c in checkpoints]
    model: Backbone = (members[0] if len(members) == 1  # a fusion acts as one backbone
                       else cast(Backbone, FusedBackbone(members, fuse_mode)))
    _fill_input_defaults(options, model.data_config)
    folder = output_folder(checkpoints[0].parent)  # the user cache when read-only
    if task == "invariance":
        result = run_invariance(model, options, folder, device, checkpoints[0], suffix)
    else:
        result = run_task(model, task, options, folder, device, checkpoints[0])
    payload: dict[str, Any] = {
        "task": task, "checkpoint": str(checkpoints[0]), "result": result, "config": options,
        "source": members[0].source if len(members) == 1 else [m.source for m in members],
        "device": str(device), "seconds": time.perf_counter() - start,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "scikit-learn": sklearn.__version__, "numpy": np.__version__},
    }
    if suffix:
        payload.update(checkpoints=[str(c) for c in checkpoints], fusion_mode=fuse_mode,
                       feature_dim=model.feature_dim)
    write_json(folder / f"eval_{task}{suffix}.json", payload)
    return payload


def check_task(task: str, options: dict[str, Any]) -> None:
    """Refuse a task section whose data cannot serve `task` (a required split missing, a
    detection source without its keys) before any model is loaded."""
    _runner(task)
    _check_data(task, options["data"])


def run_task(model: Backbone, task: str, options: dict[str, Any], folder: Path,
             device: torch.device, checkpoint: Path | None = None) -> dict[str, Any]:
    """Run `task` (not invariance) on a loaded backbone with the resolved options of its
    ``evaluate.<task>`` section (a dict, completed in place: the input size and
    normalisation default to the model's ``data_config``) and return the result. Feature
    caches go under `folder`; nothing else is written. `checkpoint` is the backbone's file
    (detection's ``init: rpn`` reads the FPN and RPN from it)."""
    check_task(task, options)
    _fill_input_defaults(options, model.data_config)
    options["checkpoint"] = checkpoint
    try:
        return _runner(task)(model, options, folder, device)
    finally:
        options.pop("checkpoint", None)


_REFUSED = {
    "detection": "--task detection cannot evaluate a fusion of checkpoints: Faster R-CNN "
                 "builds its feature pyramid from the stages of one ResNet trunk, and fused "
                 "features exist only after each member's global pool. Evaluate detection "
                 "on each checkpoint separately",
    "finetune": "--task finetune does not fine-tune a fusion of checkpoints: the fusion of "
                "arXiv:2111.11398 combines frozen features. Use --task linear or fewshot, "
                "or fine-tune each checkpoint separately",
}


def _fill_input_defaults(options: dict[str, Any], data_config: dict[str, Any] | None) -> None:
    """Complete a task section's ``image_size``, ``mean`` and ``std`` (those it has) from
    the model's ``data_config`` through `InputSpec.resolve`, which checks them too."""
    keys = [k for k in ("image_size", "mean", "std") if k in options]
    if not keys:
        return
    try:
        spec = InputSpec.resolve(data_config, **{k: options[k] for k in keys}).to_dict()
    except ValueError as e:
        raise ConfigError(f"config key 'evaluate.*': {e}") from None
    options.update({k: spec[k] for k in keys})


def _check_data(task: str, data: dict[str, Any]) -> None:
    key = f"evaluate.{task}.data"
    if task == "detection":
        for split in ("train", "test"):
            if not data.get(split):
                raise ConfigError(
                    f"config key '{key}.{split}' is required: a source {{format: coco, images: "
                    "DIR, annotations: FILE.json}} or {format: voc, root: VOCdevkit/VOC2007, "
                    "split: trainval} (train may list several)")
            sources = data[split] if isinstance(data[split], list) else [data[split]]
            for source in sources:
                _check_source(source, f"{key}.{split}")
        return
    if task == "invariance":
        return
    if task_section(task) in DENSE_TASKS:
        return check_dense_data(task, data)
    if task in ("linear", "fewshot", "finetune") and (data.get("dataset") or data.get("root")):
        folders = [s for s in ("train", "val", "test") if data.get(s)]
        if folders or not data.get("dataset") or not data.get("root"):
            raise ConfigError(f"config key '{key}': name a dataset torchvision reads with both "
                              f"dataset and root (the folder holding its files), or give "
                              f"ImageFolder roots train/val/test, not both (got "
                              f"{ {k: v for k, v in data.items() if v and k != 'val_fraction'} })")
        return
    needed = ("train", "test") if task != "fewshot" else ()
    for split in needed:
        if data.get(split) is None:
            raise ConfigError(f"config key '{key}.{split}' is required for the {task} task: "
                              "an ImageFolder root (one sub-folder of images per class)")
    if task == "fewshot" and not any(data.get(s) for s in ("train", "val", "test")):
        raise ConfigError(f"config key '{key}': the fewshot task needs at least one of train, "
                          "val, test (ImageFolder roots; their images are pooled)")


def _inputs(o: dict[str, Any]) -> dict[str, Any]:
    return {"image_size": o["image_size"], "mean": o["mean"], "std": o["std"]}


def _splits(o: dict[str, Any]) -> dict[str, Any]:
    d = o["data"]
    if d.get("dataset"):
        return transfer_splits(d["dataset"], d["root"], val_fraction=d["val_fraction"],
                               seed=o["seed"], **_inputs(o))
    return labelled_folder_splits(d["train"], d["test"], d["val"], val_fraction=d["val_fraction"],
                                  seed=o["seed"], **_inputs(o))


def _linear(model: Backbone, o: dict[str, Any], folder: Path,
            device: torch.device) -> dict[str, Any]:
    s = _splits(o)
    result = linear_probe(model, s["train"], s["val"], s["test"], batch_size=o["batch_size"],
                          num_workers=o["num_workers"], device=device,
                          cache_dir=folder / "feature_cache" if o["cache_features"] else None,
                          c_values=o["c_values"], metric=o["metric"], max_iter=o["max_iter"],
                          standardize=o["standardize"], calibration_bins=o["calibration_bins"])
    return {**result, "data": s["report"], "classes": s["classes"]}


def _fewshot(model: Backbone, o: dict[str, Any], folder: Path,
             device: torch.device) -> dict[str, Any]:
    d = o["data"]
    roots = [d[s] for s in o["splits"] if d[s] is not None]
    if d.get("dataset"):
        pool, classes = pooled_transfer(d["dataset"], d["root"], o["splits"], seed=o["seed"],
                                        **_inputs(o))
    elif not roots:
        raise ConfigError(f"config key 'evaluate.fewshot.splits': none of {o['splits']} has a "
                          "folder in evaluate.fewshot.data")
    else:
        pool, classes = pooled_folders(roots, **_inputs(o))
    features, labels = extract_features(
        model, pool, batch_size=o["batch_size"], num_workers=o["num_workers"], device=device,
        cache_dir=folder / "feature_cache" if o["cache_features"] else None, name="fewshot")
    file = Path(o["episodes_file"]) if o["episodes_file"] else None
    if file is not None and file.is_file():
        episodes = Episodes.load(file)
    else:
        episodes = make_episodes(labels, o["way"], o["shot"], o["query"], o["episodes"],
                                 o["seed"])
        if file is not None:
            episodes.save(file)
    result = fit_fewshot(features, labels, episodes, classifier=o["classifier"],
                         logistic_c=o["logistic_c"], feature_norm=o["feature_norm"])
    return {**result, "pool_images": int(labels.size), "pool_classes": len(classes)}


def _finetune(model: Backbone, o: dict[str, Any], folder: Path,
              device: torch.device) -> dict[str, Any]:
    s = _splits(o)
    result = evaluate_finetune(
        model, s["train_augmented"], s["val"], s["test"], num_classes=len(s["classes"]),
        lrs=o["lrs"], weight_decays=o["weight_decays"], steps=o["steps"],
        optimizer=o["optimizer"], batch_size=o["batch_size"], momentum=o["momentum"],
        metric=o["metric"], refit=o["refit"], trainval_set=s["trainval_augmented"],
        num_workers=o["num_workers"], device=device, seed=o["seed"])
    return {**result, "data": s["report"], "classes": s["classes"]}


def _detection(model: Backbone, o: dict[str, Any], folder: Path,
               device: torch.device) -> dict[str, Any]:
    require_resnet(model, "detection")
    d = o["data"]
    train_sources = d["train"] if isinstance(d["train"], list) else [d["train"]]
    test_sources = d["test"] if isinstance(d["test"], list) else [d["test"]]
    first = _load_source(train_sources[0], None, d["on_bad_box"], o["hflip"])
    train = concat_detection([first] + [_load_source(s, first.classes, d["on_bad_box"],
                                                     o["hflip"]) for s in train_sources[1:]])
    test = concat_detection([_load_source(s, train.classes, d["on_bad_box"], False)
                             for s in test_sources])
    init = detector_init(o, "detection")
    sizes = o["anchor_sizes"] or (init["anchor_sizes"] if init else list(ANCHOR_SIZES))
    ratios = o["aspect_ratios"] or (init["aspect_ratios"] if init else list(ASPECT_RATIOS))
    o["anchor_sizes"], o["aspect_ratios"] = sizes, ratios
    common = dict(
        trainable_layers=o["trainable_layers"], batch_size=o["batch_size"],
        min_size=o["min_size"], max_size=o["max_size"], image_mean=o["mean"],
        image_std=o["std"], score_threshold=o["score_threshold"],
        detections_per_image=o["detections_per_image"], num_workers=o["num_workers"],
        device=device, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"],
        warmup_images=o["warmup_images"], lr_steps=o["lr_steps"], anchor_sizes=sizes,
        aspect_ratios=ratios, detector_init=init)
    if o["protocol"] == "label_scarce":
        return evaluate_label_scarce(model, train, test, fractions=o["fractions"],
                                     seeds=o["seeds"], images=o["images"], **common)
    if o["protocol"] == "few_shot":
        f = o["few_shot"]
        novel = novel_classes(train.classes, f["novel_classes"], f["split"])
        return evaluate_few_shot_detection(
            model, train, test, novel=novel, shots=f["shots"], seeds=o["seeds"],
            finetune=f["finetune"], base_images=f["base_images"], images=o["images"],
            **common)
    return evaluate_detection(model, train, test, images=o["images"], seed=o["seed"],
                              **common)


def _check_source(source: Any, key: str) -> None:
    fmt = source.get("format") if isinstance(source, dict) else None
    needed = {"coco": ("images", "annotations"), "voc": ("root",)}.get(str(fmt))
    if needed is None:
        raise ConfigError(f"config key '{key}': each source needs format: coco or voc, got "
                          f"{source!r}")
    allowed = set(needed) | {"format", "split"}
    extra = sorted(set(source) - allowed)
    missing = [k for k in needed if not source.get(k)]
    if extra or missing:
        raise ConfigError(f"config key '{key}' ({fmt}): "
                          + (f"unknown keys {extra}; " if extra else "")
                          + (f"missing {missing}; " if missing else "")
                          + f"a {fmt} source takes {sorted(allowed)}")


def _load_source(source: dict[str, Any], classes: list[str] | None, on_bad_box: str,
                 hflip: bool) -> DetectionDataset:
    if source["format"] == "coco":
        return load_coco(source["images"], source["annotations"], classes=classes,
                         on_bad_box=on_bad_box, hflip=hflip)
    return load_voc(source["root"], source.get("split", "trainval"), classes=classes,
                    on_bad_box=on_bad_box, hflip=hflip)


#: The runner of each task but invariance (`run_invariance`), by its section class.
_RUNNERS = {LinearTask: _linear, FewshotTask: _fewshot, FinetuneTask: _finetune,
            DetectionTask: _detection, **DENSE_TASKS}


def _runner(task: str) -> Any:
    """The function that runs `task` on a loaded backbone; a ConfigError for another name."""
    runnable = [t for t in TASKS if task_section(t) in _RUNNERS]
    if task not in runnable:
        raise ConfigError(f"unknown evaluation task {task!r}; choose one of {tuple(runnable)}")
    return _RUNNERS[task_section(task)]
