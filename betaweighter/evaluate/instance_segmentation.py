"""Instance-segmentation transfer: Mask R-CNN with an FPN on the pre-trained ResNet.

Mask R-CNN (He et al., ICCV 2017) is how detection pre-training papers (for example
arXiv:2211.09022) and the self-supervised transfer literature after MoCo report COCO
instance segmentation. The network is torchvision's ``MaskRCNN``, built exactly as the
detection task's Faster R-CNN (`build_faster_rcnn`: the trunk copied with frozen
BatchNorm, ``trainable_layers`` of it training, the same FPN and anchors) plus the mask
head, and trained by the same loop (`train_detector`: SGD, warm-up, two drops by 10, an
images-seen budget). An RPN pre-training checkpoint's ``detector_init`` starts the trunk,
FPN and RPN (`load_detector_init`), as ``init: rpn`` does for detection; the box and mask
heads start fresh.

Masks are scored with pycocotools' ``COCOeval(iouType="segm")`` on the COCO-format
ground truth (polygons or RLE), boxes of the same detections with ``iouType="bbox"``.
Predicted masks are the mask head's probabilities pasted at the original image size and
thresholded at `mask_threshold` (0.5, as torchvision's and detectron2's evaluators do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.detection import MaskRCNN
from tqdm.auto import tqdm

from betaweighter.data.coco_masks import mask_api
from betaweighter.data.detection import DetectionDataset, collate_detection
from betaweighter.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from betaweighter.evaluate.detection import (
    ANCHOR_SIZES,
    ASPECT_RATIOS,
    DETECTOR_PARTS,
    build_faster_rcnn,
    load_detector_init,
    train_detector,
)
from betaweighter.evaluate.detection_metrics import coco_metrics
from betaweighter.runtime import progress_disabled, resolve_device

__all__ = ["MASK_PARTS", "build_mask_rcnn", "evaluate_instance_segmentation",
           "predict_instances", "score_instances"]

#: the mask branch's parts, by state-dict prefix (never in an RPN pre-training checkpoint)
MASK_PARTS = ("roi_heads.mask_head", "roi_heads.mask_predictor")
#: detectron2's COCO Mask R-CNN training scales (the "1x" schedule's multi-scale set)
TRAIN_SIZES = tuple(range(640, 801, 32))


def build_mask_rcnn(backbone: nn.Module, num_classes: int, *, rois_per_image: int = 512,
                    **options: Any) -> MaskRCNN:
    """Mask R-CNN + FPN on a copy of the backbone's ResNet with frozen BatchNorm; `options`
    are `build_faster_rcnn`'s (trainable_layers, min_size, max_size, image_mean, ...).
    `rois_per_image` proposals per training image are sampled for the box and mask heads
    (up to a quarter of them positive): 512 in torchvision and detectron2; the mask head's
    cost grows with it, so tiny data may take fewer."""
    model = build_faster_rcnn(backbone, num_classes, detector=MaskRCNN, **options)
    model.roi_heads.fg_bg_sampler.batch_size_per_image = int(rois_per_image)
    return model


@torch.no_grad()
def predict_instances(model: MaskRCNN, dataset: DetectionDataset, *, batch_size: int = 2,
                      mask_threshold: float = 0.5, num_workers: int = 0,
                      device: Any = None) -> tuple[list[dict], list[dict]]:
    """COCO-style results of `model` on every image of `dataset`: (box detections
    ``{"image_id", "category_id", "bbox", "score"}``, mask detections ``{"image_id",
    "category_id", "segmentation": RLE, "score"}``), one of each per predicted instance,
    in original image pixels."""
    coco_mask = mask_api()
    device = resolve_device(device)
    model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_detection)
    boxes_out, masks_out = [], []
    for imgs, targets in tqdm(loader, desc="instance segmentation inference",
                              disable=progress_disabled(), leave=False):
        for pred, t in zip(model([im.to(device) for im in imgs]), targets):
            binary = (pred["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
            encoded = coco_mask.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
            for box, score, label, segm in zip(pred["boxes"].tolist(), pred["scores"].tolist(),
                                                pred["labels"].tolist(), encoded):
                common = {"image_id": int(t["image_id"]), "category_id": int(label),
                          "score": score}
                boxes_out.append({**common, "bbox": [box[0], box[1], box[2] - box[0],
                                                     box[3] - box[1]]})
                masks_out.append({**common, "segmentation": {
                    "size": [int(v) for v in segm["size"]],
                    "counts": segm["counts"].decode("ascii")}})
    return boxes_out, masks_out


def score_instances(dataset: DetectionDataset, boxes: list[dict],
                    masks: list[dict]) -> dict[str, float | None]:
    """COCO mask AP/AP50/AP75 (``segm``) and box AP/AP50/AP75 (``bbox``) on `dataset`, whose
    records must carry segmentations (``load_coco(..., masks=True)``)."""
    if any(r.segmentations is None for r in dataset.records):
        raise ValueError("mask AP needs ground-truth masks: load the test set with "
                         "load_coco(..., masks=True)")
    gt = dataset.coco_ground_truth()
    mask_ap, box_ap = coco_metrics(gt, masks, "segm"), coco_metrics(gt, boxes, "bbox")
    return {**{f"mask_{k}": v for k, v in mask_ap.items()},
            **{f"box_{k}": v for k, v in box_ap.items()}}


def evaluate_instance_segmentation(
        backbone: nn.Module, train_set: DetectionDataset, test_set: DetectionDataset, *,
        trainable_layers: int = 3, images: int = 1_440_000, batch_size: int = 2,
        min_size: int | Sequence[int] = TRAIN_SIZES, max_size: int = 1333,
        image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD,
        score_threshold: float = 0.05, detections_per_image: int = 100,
        mask_threshold: float = 0.5, rois_per_image: int = 512, num_workers: int = 0,
        device: Any = None, seed: int = 0,
        detector_init: dict[str, Any] | None = None, anchor_sizes: Sequence[int] = ANCHOR_SIZES,
        aspect_ratios: Sequence[float] = ASPECT_RATIOS,
        **train_options: Any) -> dict[str, Any]:
    """Train Mask R-CNN on `train_set` (with masks) from `backbone`, score it on `test_set`.

    `train_options` go to `train_detector` (lr, momentum, weight_decay, warmup_images,
    lr_steps). Returns ``mask_AP``, ``mask_AP50``, ``mask_AP75``, ``box_AP``, ``box_AP50``,
    ``box_AP75`` (fractions in [0, 1]; None without ground truth), the training log, the
    initialisation report and both datasets' annotation reports.
    """
    if test_set.classes != train_set.classes:
        raise ValueError(f"train and test classes differ: {train_set.classes} vs "
                         f"{test_set.classes}")
    if any(r.segmentations is None for r in train_set.records):
        raise ValueError("Mask R-CNN trains on masks: load the training set with "
                         "load_coco(..., masks=True)")
    model = build_mask_rcnn(backbone, len(train_set.classes), trainable_layers=trainable_layers,
                            min_size=min_size, max_size=max_size, image_mean=image_mean,
                            image_std=image_std, score_threshold=score_threshold,
                            detections_per_image=detections_per_image,
                            anchor_sizes=anchor_sizes, aspect_ratios=aspect_ratios,
                            rois_per_image=rois_per_image)
    if detector_init is not None:
        report = load_detector_init(model, detector_init)
        report["fresh"] += list(MASK_PARTS)
    else:
        report = {"loaded": {"backbone.body": "from the backbone"},
                  "fresh": list(DETECTOR_PARTS[1:]) + list(MASK_PARTS)}
    log = train_detector(model, train_set, images=images, batch_size=batch_size,
                         num_workers=num_workers, device=device, seed=seed, **train_options)
    boxes, masks = predict_instances(model, test_set, batch_size=batch_size,
                                     mask_threshold=mask_threshold, num_workers=num_workers,
                                     device=device)
    return {**score_instances(test_set, boxes, masks), "detections": len(boxes),
            "trainable_layers": trainable_layers, "training": log, "init": report,
            "train_data": train_set.report, "test_data": test_set.report}
