"""Semantic-segmentation transfer: a torchvision head on the backbone's feature map.

The dense-prediction protocol of "How Well Do Self-Supervised Models Transfer?"
(arXiv:2011.13377) fine-tunes the whole ResNet under a segmentation decoder and reports
mIoU and pixel accuracy. Here the decoder is one of torchvision's standard heads, FCN's
(Long et al., CVPR 2015; ``FCNHead``) or DeepLabV3's ASPP (Chen et al.,
arXiv:1706.05587; ``DeepLabHead``), on the trunk's spatial map (`spatial_trunk`; ResNets
dilated to output stride 8 by default, as torchvision's ``fcn_resnet50`` and
``deeplabv3_resnet50``). The backbone is fine-tuned with the head (the paper) or frozen
(only the head trains: the backbone stays in eval mode, outside the optimiser and the
autograd graph). Logits are upsampled bilinearly to the mask's size; pixels labelled 255
are ignored by the loss and the metrics.

Training follows torchvision's segmentation reference recipe: random rescaling of the
shorter side to 0.5..2 x the crop size, random flips and square crops, per-pixel
cross-entropy, SGD with momentum 0.9 and weight decay 1e-4 under a polynomial ("poly",
power 0.9) decay, the learning rate scaled linearly with the batch (0.02 for 32 crops).
The budget is a number of training images seen, as for detection.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from tqdm.auto import tqdm

from betaweighter.data.segmentation import (
    IGNORE_INDEX,
    SegmentationDataset,
    segmentation_transform,
)
from betaweighter.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from betaweighter.errors import NonFiniteLossError
from betaweighter.evaluate.dense import spatial_trunk
from betaweighter.evaluate.detection import freeze_batchnorm
from betaweighter.evaluate.segmentation_metrics import confusion_matrix, segmentation_scores
from betaweighter.runtime import progress_disabled, resolve_device

__all__ = ["BACKBONE_MODES", "HEADS", "Segmenter", "build_segmenter", "evaluate_segmentation",
           "predict_confusion", "train_segmenter"]

HEADS = ("fcn", "deeplab")
BACKBONE_MODES = ("finetune", "frozen")


class Segmenter(nn.Module):
    """``forward(x, size)``: per-pixel class logits (N, K, *size) for normalised images x
    (`size` defaults to x's own). A `frozen` trunk stays in eval mode and runs without
    gradients whatever ``train()`` is called with."""

    def __init__(self, trunk: nn.Module, head: nn.Module, frozen: bool, stride: int) -> None:
        super().__init__()
        self.trunk, self.head, self.frozen, self.stride = trunk, head, frozen, stride
        if frozen:
            self.trunk.requires_grad_(False)
            self.trunk.eval()

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        if self.frozen:
            self.trunk.eval()
        return self

    def forward(self, x: Tensor, size: Sequence[int] | None = None) -> Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            features = self.trunk(x)
        logits = self.head(features)
        return F.interpolate(logits, size=tuple(size or x.shape[-2:]), mode="bilinear",
                             align_corners=False)


def build_segmenter(backbone: nn.Module, num_classes: int, *, head: str = "fcn",
                    backbone_mode: str = "finetune", output_stride: int | None = None,
                    batchnorm: str = "train") -> Segmenter:
    """A `Segmenter` on a copy of `backbone`'s spatial trunk (the backbone is untouched).

    `head` is ``fcn`` (torchvision's ``FCNHead``) or ``deeplab`` (``DeepLabHead``, atrous
    rates 6, 12, 18 at output stride 16, scaled with the stride as DeepLabV3 does).
    `backbone_mode` is ``finetune`` or ``frozen``. With ``batchnorm="frozen"`` a fine-tuned
    trunk keeps its BatchNorm statistics and affine parameters (``FrozenBatchNorm2d``, as
    the detection task does); ``train`` updates them (the paper, torchvision's recipe).
    """
    if head not in HEADS or backbone_mode not in BACKBONE_MODES:
        raise ValueError(f"head must be one of {HEADS} and backbone_mode one of "
                         f"{BACKBONE_MODES}, got {head!r} and {backbone_mode!r}")
    if batchnorm not in ("train", "frozen"):
        raise ValueError(f"batchnorm must be 'train' or 'frozen', got {batchnorm!r}")
    spatial = spatial_trunk(backbone, output_stride)
    trunk = spatial.module.cpu()
    if backbone_mode == "finetune" and batchnorm == "frozen":
        trunk = freeze_batchnorm(trunk)
    if head == "fcn":
        decoder: nn.Module = FCNHead(spatial.channels, num_classes)
    else:
        rates = tuple(max(1, r * 16 // spatial.stride) for r in (6, 12, 18))
        decoder = DeepLabHead(spatial.channels, num_classes, atrous_rates=rates)
    return Segmenter(trunk, decoder, backbone_mode == "frozen", spatial.stride)


def train_segmenter(model: Segmenter, dataset: SegmentationDataset, *, images: int,
                    batch_size: int = 8, lr: float | None = None, momentum: float = 0.9,
                    weight_decay: float = 1e-4, poly_power: float = 0.9, num_workers: int = 0,
                    device: Any = None, seed: int = 0) -> dict[str, Any]:
    """Train for ``ceil(images / batch_size)`` iterations of `batch_size` crops (drawn
    without replacement, a new permutation per pass); `lr` defaults to
    0.02 * batch_size / 32. Raises `NonFiniteLossError` when the loss stops being finite."""
    device = resolve_device(device)
    iterations = max(1, math.ceil(images / batch_size))
    lr = 0.02 * batch_size / 32 if lr is None else lr
    torch.manual_seed(seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: (1 - it / iterations) ** poly_power)
    sampler = RandomSampler(dataset, num_samples=iterations * batch_size,
                            generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                        num_workers=num_workers, drop_last=True,
                        pin_memory=device.type == "cuda")
    last, start = torch.zeros(()), time.perf_counter()
    for it, (image, mask) in enumerate(tqdm(loader, desc="segmentation training",
                                            disable=progress_disabled(), total=iterations)):
        image = image.to(device, non_blocking=True)
        mask = mask.to(device, non_blocking=True).long()
        logits = model(image, mask.shape[-2:])
        labelled = (mask != IGNORE_INDEX).sum().clamp(min=1)
        loss = F.cross_entropy(logits, mask, ignore_index=IGNORE_INDEX,
                               reduction="sum") / labelled
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"segmentation loss became {loss.item()} at iteration "
                                     f"{it} (lr {lr:g}); lower evaluate.segmentation.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        last = loss.detach()
    return {"iterations": iterations, "images_seen": iterations * batch_size,
            "batch_size": batch_size, "lr": lr, "final_loss": float(last),
            "seconds": time.perf_counter() - start}


@torch.no_grad()
def predict_confusion(model: Segmenter, dataset: SegmentationDataset, *, num_workers: int = 0,
                      device: Any = None) -> Tensor:
    """The (K, K) pixel confusion matrix of `model` on `dataset`, one image at a time (test
    images differ in size), the logits upsampled to each original mask."""
    device = resolve_device(device)
    model.to(device).eval()
    k = len(dataset.classes)
    total = torch.zeros(k, k, dtype=torch.int64, device=device)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers)
    for image, mask in tqdm(loader, desc="segmentation inference",
                            disable=progress_disabled(), leave=False):
        mask = mask.to(device)
        prediction = model(image.to(device), mask.shape[-2:]).argmax(1)
        total += confusion_matrix(mask, prediction, k, IGNORE_INDEX)
    return total.cpu()


def evaluate_segmentation(backbone: nn.Module, train_set: SegmentationDataset,
                          test_set: SegmentationDataset, *, head: str = "fcn",
                          backbone_mode: str = "finetune", output_stride: int | None = None,
                          batchnorm: str = "train", crop_size: int = 224,
                          scale_range: Sequence[float] = (0.5, 2.0), hflip: bool = True,
                          test_size: int | None = None,
                          mean: Sequence[float] = IMAGENET_MEAN,
                          std: Sequence[float] = IMAGENET_STD, images: int = 44_000,
                          batch_size: int = 8, num_workers: int = 0, device: Any = None,
                          seed: int = 0, **train_options: Any) -> dict[str, Any]:
    """Train a segmenter on `train_set` from `backbone` and score it on `test_set`.

    Training crops are `crop_size` square; test images have their shorter side resized to
    `test_size` (None: `crop_size`) and are scored at their original mask size.
    `train_options` go to `train_segmenter` (lr, momentum, weight_decay, poly_power).
    Returns ``mIoU``, ``pixel_accuracy``, ``mean_class_accuracy``, ``per_class_iou``
    (fractions in [0, 1]), the training log and both sets' reports.
    """
    if test_set.classes != train_set.classes:
        raise ValueError(f"train and test classes differ: {train_set.classes} vs "
                         f"{test_set.classes}")
    with torch.random.fork_rng(devices=[]):  # the head's initialisation follows `seed`
        torch.manual_seed(seed)
        model = build_segmenter(backbone, len(train_set.classes), head=head,
                                backbone_mode=backbone_mode, output_stride=output_stride,
                                batchnorm=batchnorm)
    train = train_set.with_transform(segmentation_transform(
        mean, std, crop=crop_size, scale_range=scale_range, hflip=hflip))
    test = test_set.with_transform(segmentation_transform(
        mean, std, size=test_size or crop_size))
    log = train_segmenter(model, train, images=images, batch_size=batch_size,
                          num_workers=num_workers, device=device, seed=seed, **train_options)
    confusion = predict_confusion(model, test, num_workers=num_workers, device=device)
    return {**segmentation_scores(confusion, test_set.classes),
            "confusion_matrix": confusion.tolist(), "head": head,
            "backbone": backbone_mode, "output_stride": model.stride,
            "trainable_parameters": sum(p.numel() for p in model.parameters()
                                        if p.requires_grad),
            "training": log, "train_data": train_set.report, "test_data": test_set.report}
