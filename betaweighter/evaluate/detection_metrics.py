"""Detection metrics: COCO AP/AP50/AP75 (pycocotools) and PASCAL VOC07 11-point AP50.

Both read the same ground truth, a COCO-format dict (`DetectionDataset.coco_ground_truth`),
and the same detections, a list of ``{"image_id", "category_id", "bbox": [x, y, w, h],
"score"}``. Boxes flagged ``iscrowd`` (COCO crowds, VOC "difficult") are ignored: a
detection matched to one is neither a true nor a false positive. "How Well Do
Self-Supervised Models Transfer?" (arXiv:2011.13377) quotes VOC07 AP50; COCO AP uses
101-point interpolation and gives different numbers, so both are reported.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from betaweighter.evaluate.metrics import voc07_ap11

__all__ = ["coco_box_metrics", "coco_metrics", "voc07_detection_ap"]

__all__ = ["coco_box_metrics", "coco_metrics", "voc07_detection_ap"]


def coco_box_metrics(ground_truth: dict[str, Any],
                     detections: list[dict[str, Any]]) -> dict[str, float | None]:
    """COCO ``AP`` (mean over IoU 0.50:0.05:0.95), ``AP50`` and ``AP75``, all areas, up to
    100 detections per image. With no detections at all every AP is 0; with no
    (non-ignored) ground truth it is None (undefined)."""
    return coco_metrics(ground_truth, detections, "bbox")


def coco_metrics(ground_truth: dict[str, Any], detections: list[dict[str, Any]],
                 iou_type: str = "bbox") -> dict[str, float | None]:
    """`coco_box_metrics` for pycocotools' `iou_type`: ``bbox`` (boxes) or ``segm`` (masks:
    ground truth and detections carry a ``segmentation``, polygons or RLE)."""
    COCO, COCOeval = _pycocotools()
    gt = COCO()
    gt.dataset = copy.deepcopy(ground_truth)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    if not any(not a.get("iscrowd", 0) for a in ground_truth["annotations"]):
        return {"AP": None, "AP50": None, "AP75": None}
    if not detections:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(list(detections)))
        ev = COCOeval(gt, dt, iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) if s >= 0 else None for s in ev.stats[:3]]
    return dict(zip(("AP", "AP50", "AP75"), stats))


def voc07_detection_ap(ground_truth: dict[str, Any], detections: list[dict[str, Any]],
                       iou_threshold: float = 0.5) -> dict[str, Any]:
    """PASCAL VOC 2007 AP per class (11-point interpolation) and their mean.

    Per class, detections are taken by decreasing score; each is a true positive when its
    best-overlapping ground-truth box (IoU > `iou_threshold`, strictly, as in the VOC
    devkit) is not yet matched, a false positive otherwise, and ignored when that box is
    "difficult". Classes without non-difficult ground truth are left out of the mean and
    listed in ``classes_without_ground_truth``. IoU uses continuous coordinates (the devkit
    added one pixel to widths and heights).
    """
    gt: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for a in ground_truth["annotations"]:
        x, y, w, h = a["bbox"]
        gt[a["category_id"]][a["image_id"]].append((x, y, x + w, y + h, a.get("iscrowd", 0)))
    dets: dict[int, list] = defaultdict(list)
    for d in detections:
        dets[d["category_id"]].append(d)
    per_class, empty = {}, []
    for cat in ground_truth["categories"]:
        k, name = cat["id"], cat["name"]
        truth = {i: np.asarray(v, dtype=np.float64) for i, v in gt[k].items()}
        npos = int(sum((t[:, 4] == 0).sum() for t in truth.values()))
        if npos == 0:
            empty.append(name)
            continue
        used = {i: np.zeros(len(t), dtype=bool) for i, t in truth.items()}
        hits = []  # 1 true positive, 0 false positive; detections on "difficult" skipped
        for d in sorted(dets[k], key=lambda d: -d["score"]):
            t = truth.get(d["image_id"])
            if t is None or len(t) == 0:
                hits.append(0)
                continue
            x, y, w, h = d["bbox"]
            ious = box_iou(torch.tensor([[x, y, x + w, y + h]], dtype=torch.float64),
                           torch.from_numpy(t[:, :4]))[0].numpy()
            j = int(np.argmax(ious))
            if ious[j] > iou_threshold and t[j, 4]:
                continue
            hit = ious[j] > iou_threshold and not used[d["image_id"]][j]
            if hit:
                used[d["image_id"]][j] = True
            hits.append(int(hit))
        hits_arr = np.asarray(hits, dtype=np.float64)
        ctp, cfp = np.cumsum(hits_arr), np.cumsum(1.0 - hits_arr)
        recall = ctp / npos
        precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        per_class[name] = voc07_ap11(recall, precision)
    mean = float(np.mean(list(per_class.values()))) if per_class else None
    return {"mAP": mean, "per_class": per_class, "classes_without_ground_truth": empty,
            "iou_threshold": iou_threshold}


def _pycocotools() -> tuple[Any, Any]:
    """pycocotools' COCO and COCOeval, or an error naming the extra that installs it."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError("COCO AP needs pycocotools: pip install 'betaweighter[detection]'"
                          ) from None
    return COCO, COCOeval
