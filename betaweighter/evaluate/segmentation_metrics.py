"""Semantic-segmentation metrics from a pixel confusion matrix: IoU per class, mIoU, pixel
accuracy and mean class accuracy, as the PASCAL VOC challenge (Everingham et al., IJCV
2010) and the ADE20K benchmark of "How Well Do Self-Supervised Models Transfer?"
(arXiv:2011.13377, CSAIL's ``eval_multipro.py``) define them.

The matrix is counted with one ``torch.bincount`` over ``truth * K + prediction`` on the
pixels whose truth is not the ignore label, as torchvision's segmentation reference
(``references/segmentation/utils.py: ConfusionMatrix``) does: exact integer counts, on the
device the predictions are on, with memory independent of the image size. This is what
``sklearn.metrics.confusion_matrix`` computes (the tests check that they agree); sklearn
is not used here because it copies each image's pixels to the CPU and to int64 arrays
with label validation, which for VOC's 1,449 validation images costs far more than the
network's forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["confusion_matrix", "segmentation_scores"]


def confusion_matrix(truth: Tensor, prediction: Tensor, num_classes: int,
                     ignore_index: int = 255) -> Tensor:
    """(K, K) int64 counts: entry [t, p] = pixels of true class t predicted as p, over the
    pixels whose truth is not `ignore_index`. `truth` and `prediction` have one shape."""
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {tuple(truth.shape)} and prediction "
                         f"{tuple(prediction.shape)} differ in shape")
    keep = truth != ignore_index
    t, p = truth[keep].long(), prediction[keep].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"true labels must be 0..{num_classes - 1} or {ignore_index}, got "
                         f"{sorted(set(t.unique().tolist()) - set(range(num_classes)))[:5]}")
    if p.numel() and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"predictions must be 0..{num_classes - 1}")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_scores(confusion: Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """``mIoU``, ``pixel_accuracy``, ``mean_class_accuracy`` and ``per_class_iou`` of a
    (K, K) confusion matrix (rows: truth, columns: prediction).

    IoU of class c = TP / (TP + FP + FN). A class that appears in neither the truth nor the
    predictions has no IoU (``None``, listed in ``classes_without_pixels``) and is left
    out of the mean; a class predicted but never true has IoU 0. Class accuracy is
    averaged over the classes with true pixels. Pixel accuracy = correct / labelled pixels.
    All are fractions in [0, 1]; with no labelled pixel at all they are None.
    """
    c = confusion.detach().to("cpu", torch.float64)
    if c.shape != (len(classes), len(classes)):
        raise ValueError(f"a {tuple(c.shape)} confusion matrix for {len(classes)} classes")
    tp, truth, predicted = c.diag(), c.sum(1), c.sum(0)
    union = truth + predicted - tp
    iou = [float(tp[k] / union[k]) if union[k] > 0 else None for k in range(len(classes))]
    seen = [v for v in iou if v is not None]
    recall = [float(tp[k] / truth[k]) for k in range(len(classes)) if truth[k] > 0]
    total = float(c.sum())
    return {
        "mIoU": sum(seen) / len(seen) if seen else None,
        "pixel_accuracy": float(tp.sum()) / total if total else None,
        "mean_class_accuracy": sum(recall) / len(recall) if recall else None,
        "per_class_iou": dict(zip(classes, iou)),
        "classes_without_pixels": [n for n, v in zip(classes, iou) if v is None],
        "labelled_pixels": int(total),
    }
