"""Label-efficient detection protocols: label-scarce subsets and few-shot detection.

* **Label-scarce** (DETReg, Bar et al., CVPR 2022; AlignDet, Li et al., ICCV 2023): train
  on a seeded image-level subset of ``int(p * N)`` training images (at least one) with all
  their annotations, for p in 1, 2, 5, 10 %, repeated over seeds; report AP, AP50, AP75 as
  mean and sample standard deviation over the seeds. For one seed the subsets are nested
  (the 1 % images are inside the 5 % ones): they are prefixes of one seeded permutation.
* **Few-shot** (TFA, Wang et al., ICML 2020, "Frustratingly Simple Few-Shot Object
  Detection"): the classes split into base and novel (the three VOC splits of TFA, or any
  list); a K-shot set holds, for every class, images sampled in a seeded order until that
  class has exactly K instances, keeping only that class's boxes from them. Two ways to
  fine-tune:

  - ``tfa``: stage 1 trains the detector on the base classes (every training image, novel
    boxes removed); stage 2 re-initialises the novel classes' rows of the box predictor
    and fine-tunes only the box predictor on the balanced K-shot set of all classes. (TFA
    trains a base-only classifier in stage 1 and then widens it; keeping the novel rows
    from the start, never shown a novel box until stage 2 re-initialises them, is the
    same model.)
  - ``direct``: one stage from the initialisation on the K-shot set of all classes, the
    whole detector trainable (the trunk as ``trainable_layers`` says).

  Reported: novel-class AP, AP50, AP75 (``nAP``...) and base-class AP (``bAP``...), per K
  as mean and standard deviation over seeds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from betaweighter.data.detection import DetectionDataset, DetectionRecord
from betaweighter.errors import DataError
from betaweighter.evaluate.detection import (
    build_faster_rcnn,
    evaluate_detection,
    load_detector_init,
    predict_detections,
    train_detector,
)
from betaweighter.evaluate.detection_metrics import coco_box_metrics

__all__ = ["LABEL_FRACTIONS", "TFA_SHOTS", "TFA_VOC_NOVEL", "evaluate_few_shot_detection",
           "evaluate_label_scarce", "few_shot_set", "label_subsets", "mean_std",
           "novel_classes", "subset_detection"]

LABEL_FRACTIONS = (0.01, 0.02, 0.05, 0.1)
TFA_SHOTS = (1, 2, 3, 5, 10)
#: TFA's novel classes of the three Pascal VOC splits
TFA_VOC_NOVEL = {1: ("bird", "bus", "cow", "motorbike", "sofa"),
                 2: ("aeroplane", "bottle", "cow", "horse", "sofa"),
                 3: ("boat", "cat", "motorbike", "sheep", "sofa")}
METRICS = ("AP", "AP50", "AP75")
_BUILD = ("trainable_layers", "min_size", "max_size", "image_mean", "image_std",
          "score_threshold", "detections_per_image", "anchor_sizes", "aspect_ratios")
_PREDICT = ("batch_size", "num_workers", "device")


def label_subsets(n_images: int, fractions: Sequence[float] = LABEL_FRACTIONS,
                  seed: int = 0) -> dict[float, np.ndarray]:
    """Image indices per fraction: the first ``max(1, int(p * n))`` of one permutation
    drawn with `seed`, so the subsets of one seed are nested. Sorted indices."""
    if n_images < 1:
        raise DataError("the detection training set has no images to subsample")
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"label fractions must be in (0, 1], got {f}")
    order = np.random.default_rng([int(seed), 13]).permutation(n_images)
    return {float(f): np.sort(order[:max(1, int(f * n_images))]) for f in fractions}


def subset_detection(dataset: DetectionDataset, indices: Sequence[int] | np.ndarray,
                     records: list[DetectionRecord] | None = None) -> DetectionDataset:
    """A detection set of some images of `dataset` (or of the given `records`), with its
    classes and flip setting."""
    chosen = records if records is not None else [dataset.records[int(i)] for i in indices]
    return DetectionDataset(chosen, dataset.classes, hflip=dataset.hflip)


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of the defined values."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None, None
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def _summarise(runs: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs}
    for k in keys:
        out[k], out[f"{k}_std"] = mean_std([r.get(k) for r in runs])
    return out


def evaluate_label_scarce(backbone: nn.Module, train_set: DetectionDataset,
                          test_set: DetectionDataset, *,
                          fractions: Sequence[float] = LABEL_FRACTIONS,
                          seeds: Sequence[int] = (0, 1, 2),
                          detector_init: dict[str, Any] | None = None,
                          **options: Any) -> dict[str, Any]:
    """`evaluate_detection` on every (fraction, seed) subset of `train_set`; `options` go
    to it (``images`` is the training budget of every run). Returns per fraction the runs
    and the mean and standard deviation of AP, AP50, AP75."""
    per_seed = {s: label_subsets(len(train_set), fractions, s) for s in seeds}
    result: dict[str, Any] = {}
    init_report = None
    for f in fractions:
        runs = []
        for s in seeds:
            idx = per_seed[s][float(f)]
            r = evaluate_detection(backbone, subset_detection(train_set, idx), test_set,
                                   seed=s, detector_init=detector_init, **options)
            init_report = r["init"]
            runs.append({"seed": s, "images": len(idx), **{k: r[k] for k in METRICS},
                         "voc07_AP50": r["voc07_AP50"],
                         "train_seconds": r["training"].get("seconds")})
        result[f"{100 * f:g}%"] = _summarise(runs, (*METRICS, "voc07_AP50"))
    return {"protocol": "label_scarce", "fractions": list(fractions), "seeds": list(seeds),
            "train_images": len(train_set), "results": result, "init": init_report}


# -- few-shot ---------------------------------------------------------------------------------
def novel_classes(classes: Sequence[str], novel: Sequence[str] | None = None,
                  split: int = 1) -> list[str]:
    """The novel classes: `novel` if given, else TFA's VOC split `split` (1, 2 or 3)."""
    chosen = list(novel) if novel else list(TFA_VOC_NOVEL.get(split, ()))
    if not novel and split not in TFA_VOC_NOVEL:
        raise ValueError(f"the TFA VOC splits are 1, 2 and 3, got {split}")
    missing = [c for c in chosen if c not in classes]
    if missing:
        raise DataError(f"novel classes {missing} are not among the dataset's classes "
                        f"{list(classes)}; name novel classes of this dataset (few_shot."
                        "novel_classes)")
    if len(chosen) >= len(classes) or not chosen:
        raise DataError(f"few-shot detection needs at least one base and one novel class; "
                        f"novel {chosen} of {list(classes)}")
    return chosen


def few_shot_set(dataset: DetectionDataset, k: int, seed: int = 0,
                 labels: Sequence[int] | None = None) -> DetectionDataset:
    """The K-shot set: for every class label in `labels` (default all, 1..K), images in a
    seeded order are taken while the class's instance count stays at most `k`, until it
    is exactly `k`; only the class's (non-ignored) boxes of those images are kept. An
    image taken for several classes keeps the boxes of each. `DataError` when a class
    cannot reach exactly `k`."""
    labels = list(range(1, len(dataset.classes) + 1)) if labels is None else list(labels)
    keep: dict[int, list[int]] = {}
    for label in labels:
        rng = np.random.default_rng([int(seed), int(k), int(label)])
        count = 0
        for i in rng.permutation(len(dataset.records)):
            r = dataset.records[int(i)]
            n = int(((r.labels == label) & ~r.ignore).sum())
            if n and count + n <= k:
                keep.setdefault(int(i), []).append(label)
                count += n
            if count == k:
                break
        if count != k:
            raise DataError(f"cannot sample exactly {k} instances of class "
                            f"{dataset.classes[label - 1]!r} (reached {count}): the training "
                            "set has too few images of it for this K")
    records = []
    for i in sorted(keep):
        r = dataset.records[i]
        m = np.isin(r.labels, keep[i]) & ~r.ignore
        records.append(DetectionRecord(r.file, r.width, r.height, r.boxes[m], r.labels[m],
                                       r.ignore[m]))
    return subset_detection(dataset, [], records)


def _without(dataset: DetectionDataset, labels: Sequence[int]) -> DetectionDataset:
    """Every image of `dataset` with the boxes of `labels` removed (base training)."""
    records = []
    for r in dataset.records:
        m = ~np.isin(r.labels, list(labels))
        records.append(DetectionRecord(r.file, r.width, r.height, r.boxes[m], r.labels[m],
                                       r.ignore[m]))
    return subset_detection(dataset, [], records)


def _class_metrics(test_set: DetectionDataset, dets: list[dict[str, Any]],
                   labels: Sequence[int], prefix: str) -> dict[str, Any]:
    gt = test_set.coco_ground_truth()
    gt = {**gt, "annotations": [a for a in gt["annotations"] if a["category_id"] in labels],
          "categories": [c for c in gt["categories"] if c["id"] in labels]}
    m = coco_box_metrics(gt, [d for d in dets if d["category_id"] in labels])
    return {f"{prefix}{k}": v for k, v in m.items()}


def _reinit_novel(model: nn.Module, novel: Sequence[int], seed: int) -> None:
    """Fresh rows of the box predictor for the novel classes; everything else frozen."""
    predictor = cast(Any, model).roi_heads.box_predictor  # torchvision's, untyped
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for label in novel:
            predictor.cls_score.weight[label].copy_(
                torch.randn(predictor.cls_score.weight.shape[1], generator=g) * 0.01)
            predictor.cls_score.bias[label] = 0.0
            rows = slice(4 * label, 4 * label + 4)
            predictor.bbox_pred.weight[rows].copy_(
                torch.randn(4, predictor.bbox_pred.weight.shape[1], generator=g) * 0.001)
            predictor.bbox_pred.bias[rows] = 0.0
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("roi_heads.box_predictor."))


def evaluate_few_shot_detection(backbone: nn.Module, train_set: DetectionDataset,
                                test_set: DetectionDataset, *, novel: Sequence[str],
                                shots: Sequence[int] = TFA_SHOTS,
                                seeds: Sequence[int] = (0, 1, 2), finetune: str = "tfa",
                                base_images: int = 20_000, images: int = 2_000,
                                detector_init: dict[str, Any] | None = None,
                                **options: Any) -> dict[str, Any]:
    """Few-shot detection (see the module docstring) for every K in `shots` and seed.
    `base_images` is the stage-1 budget (``tfa`` only), `images` each fine-tuning run's.
    `options` are `build_faster_rcnn`'s and `train_detector`'s keyword arguments."""
    if finetune not in ("tfa", "direct"):
        raise ValueError(f"finetune must be 'tfa' or 'direct', got {finetune!r}")
    novel = novel_classes(train_set.classes, novel)
    novel_labels = [train_set.classes.index(c) + 1 for c in novel]
    base_labels = [k for k in range(1, len(train_set.classes) + 1) if k not in novel_labels]
    build = {k: options.pop(k) for k in _BUILD if k in options}
    predict = {k: options[k] for k in _PREDICT if k in options}

    def fresh() -> tuple[nn.Module, dict[str, Any] | None]:
        model = build_faster_rcnn(backbone, len(train_set.classes), **build)
        return model, (load_detector_init(model, detector_init) if detector_init else None)

    base_log, init_report, stage1 = None, None, None
    if finetune == "tfa":
        stage1, init_report = fresh()
        base_log = train_detector(stage1, _without(train_set, novel_labels),
                                  images=base_images, seed=0, **options)
    results: dict[str, Any] = {}
    for k in shots:
        runs = []
        for s in seeds:
            shots_set = few_shot_set(train_set, k, s)
            if stage1 is not None:
                model = copy.deepcopy(stage1)
                _reinit_novel(model, novel_labels, s)
            else:
                model, init_report = fresh()
            log = train_detector(model, shots_set, images=images, seed=s, **options)
            dets = predict_detections(model, test_set, **predict)
            runs.append({"seed": s, "images": len(shots_set),
                         **_class_metrics(test_set, dets, novel_labels, "n"),
                         **_class_metrics(test_set, dets, base_labels, "b"),
                         "final_loss": log["final_loss"]})
        results[f"{k}-shot"] = _summarise(runs, ("nAP", "nAP50", "nAP75", "bAP", "bAP50"))
    return {"protocol": "few_shot", "finetune": finetune, "novel_classes": novel,
            "base_classes": [c for c in train_set.classes if c not in novel],
            "shots": list(shots), "seeds": list(seeds), "results": results,
            "base_training": base_log, "init": init_report}
