"""Object-detection transfer: Faster R-CNN with an FPN on the pre-trained ResNet.

Protocol of "How Well Do Self-Supervised Models Transfer?" (arXiv:2011.13377, detection
section), ported from its detectron2 configs to torchvision: Faster R-CNN (Ren et al.,
2015) with a feature pyramid (Lin et al., 2017) on the pre-trained ResNet trunk, every
BatchNorm replaced by a frozen one (statistics and affine parameters fixed) in all
variants, and ``trainable_layers`` choosing how much of the trunk trains: 1 = only
``layer4`` (res5), which is what the paper calls "frozen" (detectron2 FREEZE_AT=4); 5 = full
fine-tuning; 0 = the whole trunk frozen. SGD with momentum 0.9, weight decay 1e-4, a linear
warm-up and two learning-rate drops by 10 at 2/3 and 8/9 of training, multi-scale training
(shorter side drawn from 480..800) and testing at 800. The schedule is an images-seen
budget (the paper: 144k iterations x 2 images = 288k images) with the learning rate
scaled linearly with the batch size (0.02 for 16 images), so it does not silently assume
a batch size as the original "139.2 epochs" comment did.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d
from tqdm.auto import tqdm

from betaweighter.data.detection import DetectionDataset, collate_detection
from betaweighter.data.loaders import forever
from betaweighter.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from betaweighter.errors import CheckpointError, NonFiniteLossError
from betaweighter.evaluate.detection_metrics import coco_box_metrics, voc07_detection_ap
from betaweighter.evaluate.fusion import FusedBackbone
from betaweighter.pretext.rpn import ANCHOR_SIZES, ASPECT_RATIOS
from betaweighter.runtime import progress_disabled, resolve_device

__all__ = ["ANCHOR_SIZES", "ASPECT_RATIOS", "DETECTOR_PARTS", "build_faster_rcnn",
           "evaluate_detection", "fpn_backbone", "freeze_batchnorm", "load_detector_init",
           "predict_detections", "resnet_trunk", "score_detections", "train_detector"]

TRAIN_SIZES = tuple(range(480, 801, 32))
TRUNK_LAYERS = ("layer4", "layer3", "layer2", "layer1", "conv1")
#: the parts of a Faster R-CNN an initialisation report speaks of, by state-dict prefix
DETECTOR_PARTS = ("backbone.body", "backbone.fpn", "rpn.head", "roi_heads.box_head",
                  "roi_heads.box_predictor")


def resnet_trunk(backbone: nn.Module) -> torchvision.models.ResNet:
    """The torchvision ResNet inside a `Backbone` (its ``encoder``), or `backbone` itself.
    A `FusedBackbone` is refused: it has one trunk per member, and a feature pyramid is
    built from the stages of a single trunk."""
    if isinstance(backbone, FusedBackbone):
        raise TypeError(
            f"detection transfer cannot use a fused backbone ({len(backbone.members)} "
            "members): Faster R-CNN builds its feature pyramid from the stages of one "
            "ResNet trunk, and fused features exist only after each member's global pool. "
            "Evaluate detection on each member's checkpoint instead")
    trunk = getattr(backbone, "encoder", backbone)
    if not isinstance(trunk, torchvision.models.ResNet):
        raise TypeError(
            f"detection transfer needs a torchvision ResNet backbone (model 'resnet18' or "
            f"'resnet50'); this checkpoint's encoder is a {type(trunk).__name__}"
        )
    return trunk


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in `module` (in place) by a ``FrozenBatchNorm2d``
    carrying the same running statistics, weight and bias."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            if child.affine:
                frozen.weight.copy_(child.weight.detach())
                frozen.bias.copy_(child.bias.detach())
            if child.track_running_stats and child.running_mean is not None:
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def fpn_backbone(trunk: torchvision.models.ResNet, trainable_layers: int) -> BackboneWithFPN:
    """A feature pyramid (256 channels, levels from layer1..layer4 plus a max-pooled one)
    over a torchvision ResNet whose last `trainable_layers` stages train (5 = all, with the
    stem's norm; 0 = none)."""
    train = list(TRUNK_LAYERS[:trainable_layers]) + (["bn1"] if trainable_layers == 5 else [])
    for name, parameter in trunk.named_parameters():
        if not any(name.startswith(layer) for layer in train):
            parameter.requires_grad_(False)
    stage2 = trunk.inplanes // 8  # 64 channels for ResNet-18, 256 for ResNet-50
    return BackboneWithFPN(trunk, {f"layer{k}": str(k - 1) for k in (1, 2, 3, 4)},
                           [stage2 * 2 ** (k - 1) for k in (1, 2, 3, 4)], 256,
                           extra_blocks=LastLevelMaxPool())


def build_faster_rcnn(backbone: nn.Module, num_classes: int, *, trainable_layers: int = 1,
                      min_size: int | Sequence[int] = TRAIN_SIZES, max_size: int = 1333,
                      image_mean: Sequence[float] = IMAGENET_MEAN,
                      image_std: Sequence[float] = IMAGENET_STD, score_threshold: float = 0.05,
                      detections_per_image: int = 100,
                      anchor_sizes: Sequence[int] = ANCHOR_SIZES,
                      aspect_ratios: Sequence[float] = ASPECT_RATIOS,
                      detector: type[FasterRCNN] = FasterRCNN) -> FasterRCNN:
    """Faster R-CNN + FPN on a copy of the backbone's ResNet with frozen BatchNorm.

    `num_classes` counts object classes (the background class is added). Images are
    float [0, 1] tensors, normalised inside the model with `image_mean`/`image_std` (use the
    normalisation the backbone was pre-trained with). A sequence `min_size` is sampled per
    image in training; its last value is the test size. `anchor_sizes` gives one anchor
    size per pyramid level (five), `aspect_ratios` are shared by all levels. `detector`
    is the torchvision class built (a subclass such as ``MaskRCNN`` adds its heads).
    """
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes needs one size per pyramid level (5), got "
                         f"{list(anchor_sizes)}")
    trunk = freeze_batchnorm(copy.deepcopy(resnet_trunk(backbone)).cpu())
    fpn = fpn_backbone(trunk, trainable_layers)
    sizes = (min_size,) if isinstance(min_size, int) else tuple(int(s) for s in min_size)
    anchors = AnchorGenerator(tuple((int(a),) for a in anchor_sizes),
                              (tuple(float(r) for r in aspect_ratios),) * 5)
    return detector(fpn, num_classes=num_classes + 1, min_size=sizes, max_size=max_size,
                    image_mean=list(image_mean), image_std=list(image_std),
                    box_score_thresh=score_threshold,
                    box_detections_per_img=detections_per_image,
                    rpn_anchor_generator=anchors)


def load_detector_init(model: FasterRCNN, init: dict[str, Any],
                       source: str = "the checkpoint") -> dict[str, Any]:
    """Load an RPN pre-training checkpoint's ``detector_init`` into `model`: every tensor
    whose name and shape match (trunk, FPN, RPN head). Refuses, with a `CheckpointError`,
    a checkpoint whose anchors or pyramid differ from the detector's (its RPN would
    predict for other anchors). Returns the report: tensors loaded per part, the parts
    that start fresh, and the checkpoint's tensors the detector has no place for."""
    anchors = model.rpn.anchor_generator
    have_sizes = [int(s[0]) for s in anchors.sizes]
    have_ratios = [float(r) for r in anchors.aspect_ratios[0]]
    if (list(init.get("anchor_sizes", [])) != have_sizes
            or [float(r) for r in init.get("aspect_ratios", [])] != have_ratios):
        raise CheckpointError(
            f"{source}: its RPN was pre-trained for anchors of sizes "
            f"{init.get('anchor_sizes')} and aspect ratios {init.get('aspect_ratios')}, the "
            f"detector has {have_sizes} and {have_ratios}: set the detector's anchor_sizes and "
            "aspect_ratios to the checkpoint's (or leave them null), or use init: backbone")
    fpn = init.get("fpn", {})
    trunk_channels = [m.in_channels for m in model.backbone.fpn.inner_blocks.modules()
                      if isinstance(m, nn.Conv2d)]
    if (fpn.get("out_channels") != model.backbone.out_channels
            or list(fpn.get("in_channels", [])) != trunk_channels):
        raise CheckpointError(
            f"{source}: its feature pyramid ({fpn.get('in_channels')} -> "
            f"{fpn.get('out_channels')} channels) does not match the detector's "
            f"({trunk_channels} -> {model.backbone.out_channels}); the checkpoint was "
            "pre-trained on another ResNet")
    own = model.state_dict()
    state = init.get("state", {})
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise CheckpointError(f"{source}: {len(wrong)} tensors do not fit the detector, e.g. "
                              f"{wrong[:3]}")
    matched = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(matched, strict=False)
    loaded = {part: sum(k.startswith(part + ".") for k in matched) for part in DETECTOR_PARTS}
    return {"loaded": {p: n for p, n in loaded.items() if n},
            "fresh": [p for p, n in loaded.items() if not n],
            "loaded_tensors": len(matched),
            "unused": sorted(k for k in state if k not in own
                             and not k.endswith("num_batches_tracked"))}


def train_detector(model: FasterRCNN, dataset: DetectionDataset, *, images: int,
                   batch_size: int = 2, lr: float | None = None, momentum: float = 0.9,
                   weight_decay: float = 1e-4, warmup_images: int = 200,
                   lr_steps: Sequence[float] = (2 / 3, 8 / 9), num_workers: int = 0,
                   device: Any = None, seed: int = 0) -> dict[str, Any]:
    """Train for ``ceil(images / batch_size)`` iterations; `lr` defaults to
    0.02 * batch_size / 16. Raises NonFiniteLossError (a FloatingPointError) when the loss
    becomes non-finite."""
    device = resolve_device(device)
    iterations = max(1, math.ceil(images / batch_size))
    lr = 0.02 * batch_size / 16 if lr is None else lr
    warmup = math.ceil(warmup_images / batch_size)
    milestones = [round(f * iterations) for f in lr_steps]

    def factor(it: int) -> float:
        decay = 0.1 ** sum(it >= m for m in milestones)
        if it < warmup:
            alpha = it / warmup
            return decay * (0.001 * (1 - alpha) + alpha)
        return decay

    torch.manual_seed(seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    batches = forever(DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                 num_workers=num_workers, collate_fn=collate_detection,
                                 generator=torch.Generator().manual_seed(seed)))
    last = torch.zeros(())
    start = time.perf_counter()
    for it in tqdm(range(iterations), desc="detection training", disable=progress_disabled()):
        imgs, targets = next(batches)
        imgs = [im.to(device, non_blocking=True) for im in imgs]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        loss = sum(model(imgs, targets).values())
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"the detection loss became {loss.item()} at iteration "
                                     f"{it} (lr {lr:g}); lower the task's 'lr' or raise its "
                                     "'warmup_images'")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        last = loss.detach()
    return {"iterations": iterations, "images_seen": iterations * batch_size,
            "batch_size": batch_size, "lr": lr, "lr_drops_at_iteration": milestones,
            "final_loss": float(last), "seconds": time.perf_counter() - start}


@torch.no_grad()
def predict_detections(model: FasterRCNN, dataset: DetectionDataset, *, batch_size: int = 2,
                       num_workers: int = 0, device: Any = None) -> list[dict[str, Any]]:
    """COCO-style detections ``{"image_id", "category_id", "bbox": [x, y, w, h],
    "score"}`` of `model` on every image of `dataset` (in original image pixels)."""
    device = resolve_device(device)
    model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_detection)
    out = []
    for imgs, targets in tqdm(loader, desc="detection inference", disable=progress_disabled(),
                              leave=False):
        for pred, t in zip(model([im.to(device) for im in imgs]), targets):
            for box, score, label in zip(pred["boxes"].tolist(), pred["scores"].tolist(),
                                         pred["labels"].tolist()):
                out.append({"image_id": int(t["image_id"]), "category_id": int(label),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                            "score": score})
    return out


def score_detections(dataset: DetectionDataset,
                     detections: list[dict[str, Any]]) -> dict[str, Any]:
    """COCO AP/AP50/AP75 and VOC07 11-point AP50 of `detections` on `dataset`."""
    gt = dataset.coco_ground_truth()
    voc = voc07_detection_ap(gt, detections)
    return {**coco_box_metrics(gt, detections), "voc07_AP50": voc["mAP"],
            "voc07_AP50_per_class": voc["per_class"],
            "classes_without_ground_truth": voc["classes_without_ground_truth"]}


def evaluate_detection(backbone: nn.Module, train_set: DetectionDataset, test_set: DetectionDataset,
              *, trainable_layers: int = 1, images: int = 288_000, batch_size: int = 2,
              min_size: int | Sequence[int] = TRAIN_SIZES, max_size: int = 1333,
              image_mean: Sequence[float] = IMAGENET_MEAN,
              image_std: Sequence[float] = IMAGENET_STD, score_threshold: float = 0.05,
              detections_per_image: int = 100, num_workers: int = 0, device: Any = None,
              seed: int = 0, detector_init: dict[str, Any] | None = None,
              anchor_sizes: Sequence[int] = ANCHOR_SIZES,
              aspect_ratios: Sequence[float] = ASPECT_RATIOS,
              **train_options: Any) -> dict[str, Any]:
    """Train Faster R-CNN on `train_set` from `backbone` and score it on `test_set`.

    With `detector_init` (an RPN pre-training checkpoint's ``detector_init`` entry) the
    detector also starts from its FPN and RPN (`load_detector_init`; its report comes back
    as ``init``). `train_options` go to `train_detector` (lr, momentum, weight_decay,
    warmup_images, lr_steps). Returns COCO ``AP``, ``AP50``, ``AP75``, ``voc07_AP50``
    (fractions in [0, 1]), the training log and both datasets' annotation reports.
    """
    if test_set.classes != train_set.classes:
        raise ValueError(f"train and test classes differ: {train_set.classes} vs "
                         f"{test_set.classes}")
    model = build_faster_rcnn(backbone, len(train_set.classes),
                              trainable_layers=trainable_layers, min_size=min_size,
                              max_size=max_size, image_mean=image_mean, image_std=image_std,
                              score_threshold=score_threshold,
                              detections_per_image=detections_per_image,
                              anchor_sizes=anchor_sizes, aspect_ratios=aspect_ratios)
    report = None
    if detector_init is not None:
        report = load_detector_init(model, detector_init)
    log = train_detector(model, train_set, images=images, batch_size=batch_size,
                         num_workers=num_workers, device=device, seed=seed, **train_options)
    dets = predict_detections(model, test_set, batch_size=batch_size, num_workers=num_workers,
                              device=device)
    return {**score_detections(test_set, dets), "detections": len(dets),
            "trainable_layers": trainable_layers, "training": log,
            "init": report or {"loaded": {"backbone.body": "from the backbone"},
                               "fresh": list(DETECTOR_PARTS[1:])},
            "train_data": train_set.report, "test_data": test_set.report}
