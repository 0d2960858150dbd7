"""RPN pre-training: train the feature pyramid and the region proposal network on pseudo
boxes of unlabelled images, so that a detector starts with more than its backbone
(Ericsson, Dong, Yang, Leonardis and McDonagh, "Region Proposal Network Pre-Training Helps
Label-Efficient Object Detection", arXiv:2211.09022).

The modules are torchvision's: a `FeaturePyramidNetwork` over the ResNet trunk (levels
from layer1..layer4 plus a max-pooled one, as `torchvision.models.detection` builds it) and
a `RegionProposalNetwork`, whose objectness (binary cross-entropy) and box regression
(smooth L1, beta = 1/9) are trained against pseudo boxes (`PseudoBoxes`): anchors matched
at IoU 0.7 / 0.3, 256 anchors sampled per image, half of them positive at most. The trunk
is frozen (AlignDet's choice, Li et al., ICCV 2023) or trained; its BatchNorm keeps its
statistics either way, as the detector's frozen BatchNorm will.

torchvision reduces the RPN losses over the whole batch. Here every image gets its own
loss (its sampled anchors' mean BCE plus its positives' summed smooth L1 divided by its
sampled count), so `MetaWeighter` can weight images; the mean over a batch equals
torchvision's loss whenever every image fills its 256 samples. Matching and sampling
happen in `batch`, outside the forward, so a recomputed forward (the forward-mode
meta-gradient) sees the same targets.

`detector_state` names the trained tensors as torchvision's ``FasterRCNN`` does
(``backbone.body.*``, ``backbone.fpn.*``, ``rpn.head.*``) together with the anchor and
pyramid settings a detector must share to load them; `save_detector_init` writes that as
a checkpoint the detection evaluator starts from (``init: rpn``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from betaweighter.checkpoint import save_checkpoint
from betaweighter.errors import DataError
from betaweighter.pretext.base import Pretext, PretextBatch, register_pretext
from betaweighter.pretext.boxes import PseudoBoxes

__all__ = ["ANCHOR_SIZES", "ASPECT_RATIOS", "RPNPretext", "check_boxes", "detector_config",
           "resnet_model_config"]

ANCHOR_SIZES = (32, 64, 128, 256, 512)  # torchvision's Faster R-CNN defaults, one per level
ASPECT_RATIOS = (0.5, 1.0, 2.0)
FPN_CHANNELS = 256
TRUNK_STAGES = ("layer1", "layer2", "layer3", "layer4")


def detector_config(trunk_channels: Sequence[int], anchor_sizes: Sequence[int] = ANCHOR_SIZES,
                    aspect_ratios: Sequence[float] = ASPECT_RATIOS,
                    fpn_channels: int = FPN_CHANNELS) -> dict[str, Any]:
    """The settings a detector must share with an RPN checkpoint to load it."""
    return {"anchor_sizes": [int(s) for s in anchor_sizes],
            "aspect_ratios": [float(a) for a in aspect_ratios],
            "fpn": {"in_channels": [int(c) for c in trunk_channels],
                    "out_channels": int(fpn_channels),
                    "levels": ["0", "1", "2", "3", "pool"]}}


def resnet_model_config(backbone: nn.Module) -> dict[str, Any]:
    """``{"name": "resnet18" | "resnet50", "num_classes": ...}`` of a ResNet `Backbone`."""
    trunk = _trunk(backbone)
    name = ("resnet50" if isinstance(trunk.layer1[0], torchvision.models.resnet.Bottleneck)
            else "resnet18")
    head = getattr(backbone, "head", None)
    return {"name": name, "num_classes": int(head.out_features) if isinstance(
        head, nn.Linear) else 4}


def check_boxes(boxes: Tensor, height: int, width: int, where: str) -> Tensor:
    """`boxes` as float (n, 4) xyxy, after checking each lies inside the image and has an
    area; a `DataError` naming `where` and the box otherwise."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if boxes.numel():
        finite = torch.isfinite(boxes).all(1)
        inside = ((boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= width)
                  & (boxes[:, 3] <= height))
        ok = finite & inside & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not bool(ok.all()):
            bad = boxes[~ok][0].tolist()
            raise DataError(f"{where}: box {bad} (x1, y1, x2, y2) is not inside the "
                            f"{width}x{height} image or has no area; clip boxes to the image "
                            "and drop empty ones")
    return boxes


def _trunk(backbone: nn.Module) -> torchvision.models.ResNet:
    trunk = getattr(backbone, "encoder", backbone)
    if not isinstance(trunk, torchvision.models.ResNet):
        raise TypeError(f"RPN pre-training needs a torchvision ResNet backbone (model "
                        f"'resnet18' or 'resnet50'), got a {type(trunk).__name__}")
    return trunk


@register_pretext("rpn")
class RPNPretext(Pretext):
    """FPN + RPN trained on pseudo boxes, over the ResNet `backbone` (a `Backbone`).

    Args:
        backbone: a ResNet `Backbone` (``encoder`` is the torchvision ResNet); its weights
            are the checkpoint's ``model`` and the detector's trunk.
        boxes: a `PseudoBoxes`, a method name, or a dict of `PseudoBoxes` arguments.
        train_trunk: train the ResNet too (default: frozen, only FPN and RPN train).
        anchor_sizes: one anchor size per pyramid level (five levels).
        aspect_ratios: anchor aspect ratios, shared by every level.
        fg_iou, bg_iou: an anchor is positive at IoU >= fg_iou with a box, negative below
            bg_iou (torchvision: 0.7, 0.3).
        samples_per_image, positive_fraction: anchors sampled per image for the losses,
            and the largest positive share of them (256, 0.5).
        mean, std: the normalisation of the images `batch` receives, undone for the
            pseudo-box sources (which look at pixels).
    """

    copies = 1

    mean: Tensor
    std: Tensor

    def __init__(self, backbone: nn.Module, boxes: PseudoBoxes | str | dict = "random", *,
                 train_trunk: bool = False, anchor_sizes: Sequence[int] = ANCHOR_SIZES,
                 aspect_ratios: Sequence[float] = ASPECT_RATIOS, fg_iou: float = 0.7,
                 bg_iou: float = 0.3, samples_per_image: int = 256,
                 positive_fraction: float = 0.5, mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        trunk = _trunk(backbone)
        if len(anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs one size per pyramid level (5: layer1..layer4 "
                             f"and the pooled level), got {list(anchor_sizes)}")
        if not aspect_ratios or min(aspect_ratios) <= 0:
            raise ValueError(f"aspect_ratios must be positive numbers, got {list(aspect_ratios)}")
        if not 0 < bg_iou <= fg_iou <= 1:
            raise ValueError(f"need 0 < bg_iou <= fg_iou <= 1, got {bg_iou}, {fg_iou}")
        self.backbone = backbone
        self.train_trunk = bool(train_trunk)
        self.boxes = _pseudo_boxes(boxes)
        for p in backbone.parameters():
            p.requires_grad_(False)
        for name, p in trunk.named_parameters():  # BatchNorm stays fixed, as in the detector
            if self.train_trunk and not _is_norm(trunk, name):
                p.requires_grad_(True)
        stage2 = trunk.inplanes // 8  # 64 channels for ResNet-18, 256 for ResNet-50
        self.trunk_channels = [stage2 * 2 ** k for k in range(4)]
        self.fpn = FeaturePyramidNetwork(self.trunk_channels, FPN_CHANNELS,
                                         extra_blocks=LastLevelMaxPool())
        anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes),
                                  (tuple(float(a) for a in aspect_ratios),) * 5)
        head = RPNHead(FPN_CHANNELS, anchors.num_anchors_per_location()[0])
        self.rpn = RegionProposalNetwork(
            anchors, head, fg_iou, bg_iou, samples_per_image, positive_fraction,
            pre_nms_top_n={"training": 2000, "testing": 1000},
            post_nms_top_n={"training": 2000, "testing": 1000}, nms_thresh=0.7)
        self.config = detector_config(self.trunk_channels, anchor_sizes, aspect_ratios)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1),
                             persistent=False)
        self._anchor_cache: dict[tuple, Tensor] = {}
        self.last_parts: dict[str, float] = {}

    def bind_data(self, bundle: Any) -> None:
        """Take the pool's normalisation (to give the pseudo-box sources pixels); an empty
        pool is refused."""
        if len(bundle.pool) == 0:
            raise DataError(f"the pool of {bundle.name} is empty: RPN pre-training needs "
                            "unlabelled images")
        self.mean.copy_(torch.tensor(bundle.mean, dtype=torch.float32).view(-1, 1, 1))
        self.std.copy_(torch.tensor(bundle.std, dtype=torch.float32).view(-1, 1, 1))

    # -- the network ----------------------------------------------------------------------
    def train(self, mode: bool = True) -> RPNPretext:
        super().train(mode)
        for m in self.backbone.modules():  # the trunk's BatchNorm statistics stay fixed
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def pyramid(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """The FPN's five levels ('0'..'3', 'pool') for a batch (B, C, H, W)."""
        t = _trunk(self.backbone)
        x = t.maxpool(t.relu(t.bn1(t.conv1(x))))
        stages = OrderedDict()
        for k, name in enumerate(TRUNK_STAGES):
            x = getattr(t, name)(x)
            stages[str(k)] = x
        return self.fpn(stages)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Objectness logits (B, A) and box deltas (B, A, 4) for every anchor of the
        image size, levels concatenated in torchvision's order."""
        levels = list(self.pyramid(x).values())
        logits, deltas = self.rpn.head(levels)
        b = x.shape[0]
        objectness = torch.cat([o.permute(0, 2, 3, 1).reshape(b, -1) for o in logits], 1)
        boxes = torch.cat([_per_anchor(d, b) for d in deltas], 1)
        return objectness, boxes

    def features(self, x: Tensor) -> Tensor:
        """A pooled pyramid embedding (B, 256): each level's global average, averaged over
        levels; it depends on the FPN, so it moves with what this task trains."""
        return torch.stack([f.mean((2, 3)) for f in self.pyramid(x).values()]).mean(0)

    # -- targets and losses -----------------------------------------------------------------
    def anchors(self, height: int, width: int, device: torch.device) -> Tensor:
        """The anchors (A, 4) of an image of this size (cached per size and device)."""
        key = (height, width, str(device))
        if key not in self._anchor_cache:
            image = torch.zeros(1, 3, height, width, device=device)
            maps = [torch.zeros(s, device=device) for s in self.pyramid_shapes(height, width)]
            anchors = self.rpn.anchor_generator(ImageList(image, [(height, width)]), maps)
            self._anchor_cache[key] = anchors[0]
        return self._anchor_cache[key]

    def pyramid_shapes(self, height: int, width: int) -> list[torch.Size]:
        """The shapes (1, 0, h, w) of the pyramid levels for an image size (no forward):
        stride 4, 8, 16, 32 from the ResNet, then a stride-2 max-pool."""
        def down(s: int, k: int, stride: int, pad: int) -> int:
            return (s + 2 * pad - k) // stride + 1

        h, w = down(down(height, 7, 2, 3), 3, 2, 1), down(down(width, 7, 2, 3), 3, 2, 1)
        out = [torch.Size((1, 0, h, w))]
        for _ in range(3):
            h, w = down(h, 3, 2, 1), down(w, 3, 2, 1)
            out.append(torch.Size((1, 0, h, w)))
        out.append(torch.Size((1, 0, down(h, 1, 2, 0), down(w, 1, 2, 0))))
        return out

    def targets(self, boxes: list[Tensor], height: int, width: int,
                device: torch.device) -> tuple[Tensor, Tensor]:
        """Per anchor of every image: the sampled label (1 positive, 0 negative, -1 not
        sampled) and the regression target (B, A) and (B, A, 4). Draws the fg/bg sample
        from torch's generator."""
        anchors = self.anchors(height, width, device)
        for i, b in enumerate(boxes):
            check_boxes(b, height, width, f"pseudo boxes of image {i} of the batch")
        gts = [{"boxes": b.to(device=device, dtype=anchors.dtype)} for b in boxes]
        labels, matched = self.rpn.assign_targets_to_anchors([anchors] * len(boxes), gts)
        regression = self.rpn.box_coder.encode(matched, [anchors] * len(boxes))
        pos, neg = self.rpn.fg_bg_sampler(labels)
        sampled = torch.stack([torch.where(p.bool(), 1.0, torch.where(n.bool(), 0.0, -1.0))
                               for p, n in zip(pos, neg)])
        return sampled.to(device), torch.stack(list(regression)).to(device)

    def losses(self, out: tuple[Tensor, Tensor], labels: Tensor,
               regression: Tensor) -> tuple[Tensor, Tensor]:
        """Per-image objectness and box-regression losses (B,) each."""
        objectness, deltas = out
        sampled = (labels >= 0).to(objectness.dtype)
        positive = (labels == 1).to(objectness.dtype)
        count = sampled.sum(1).clamp_min(1.0)
        bce = F.binary_cross_entropy_with_logits(objectness, labels.clamp_min(0).to(
            objectness.dtype), reduction="none")
        obj = (bce * sampled).sum(1) / count
        l1 = F.smooth_l1_loss(deltas, regression.to(deltas.dtype), beta=1 / 9,
                              reduction="none").sum(2)
        box = (l1 * positive).sum(1) / count
        return obj, box

    def loss(self, out: tuple[Tensor, Tensor], labels: Tensor, regression: Tensor) -> Tensor:
        """The per-image RPN loss (B,): objectness + box regression."""
        obj, box = self.losses(out, labels, regression)
        self.last_parts = {"objectness": float(obj.detach().mean()),
                           "box_regression": float(box.detach().mean())}
        return obj + box

    def loss_parts(self) -> dict[str, float]:
        return dict(self.last_parts)

    def target_loss(self, x: Tensor, boxes: list[Tensor]) -> Tensor:
        """The per-image RPN loss of images `x` against given (e.g. labelled) boxes."""
        labels, regression = self.targets(boxes, x.shape[-2], x.shape[-1], x.device)
        obj, box = self.losses(self(x), labels, regression)
        return obj + box

    def batch(self, x: Tensor) -> PretextBatch:
        if x.dim() != 4:
            raise ValueError(f"RPN pre-training needs a batch of images (B, C, H, W), got "
                             f"shape {tuple(x.shape)}")
        if self.boxes.method == "copy_paste":
            x, boxes = self.boxes.paste(x)
        else:
            pixels = (x.detach() * self.std.to(x.device) + self.mean.to(x.device))
            boxes = [self.boxes(p) for p in pixels]
        labels, regression = self.targets(boxes, x.shape[-2], x.shape[-1], x.device)
        return PretextBatch(x, lambda out: self.loss(out, labels, regression), self.copies)

    def get_extra_state(self) -> dict[str, Any]:
        """The pseudo-box source's random state (copy_paste), so a resumed run pastes the
        same crops."""
        return {"boxes": self.boxes.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.boxes.load_state_dict(state.get("boxes", {}))

    # -- export -----------------------------------------------------------------------------
    def detector_state(self) -> dict[str, Any]:
        """The trained tensors under torchvision ``FasterRCNN`` names, and the settings a
        detector must share to load them (anchors, pyramid)."""
        state: dict[str, Tensor] = {}
        for k, v in _trunk(self.backbone).state_dict().items():
            if not k.startswith("fc."):
                state[f"backbone.body.{k}"] = v.detach().cpu().clone()
        state.update({f"backbone.fpn.{k}": v.detach().cpu().clone()
                      for k, v in self.fpn.state_dict().items()})
        state.update({f"rpn.head.{k}": v.detach().cpu().clone()
                      for k, v in self.rpn.head.state_dict().items()})
        return {**self.config, "state": state, "train_trunk": self.train_trunk}

    def checkpoint_entries(self) -> dict[str, Any]:
        return {"detector_init": self.detector_state()}

    def save_detector_init(self, path: str | Path, data_config: dict[str, Any] | None = None,
                           model_config: dict[str, Any] | None = None) -> Path:
        """Write a detector-initialisation checkpoint: the backbone as ``model`` (so every
        evaluator reads it), ``model_config``, ``data_config`` (image size and
        normalisation; default: this task's normalisation) and ``detector_init``."""
        if data_config is None:
            data_config = {"mean": self.mean.flatten().tolist(),
                           "std": self.std.flatten().tolist()}
        return save_checkpoint(path, {
            "model": {k: v.detach().cpu() for k, v in self.backbone.state_dict().items()},
            "model_config": model_config or resnet_model_config(self.backbone),
            "data_config": data_config, **self.checkpoint_entries()})


def _pseudo_boxes(boxes: PseudoBoxes | str | dict) -> PseudoBoxes:
    if isinstance(boxes, PseudoBoxes):
        return boxes
    if isinstance(boxes, str):
        return PseudoBoxes(boxes)
    if isinstance(boxes, dict):
        try:
            return PseudoBoxes(**boxes)
        except TypeError as e:
            raise ValueError(f"boxes: {e}") from None
    raise TypeError(f"boxes must be a PseudoBoxes, a method name or a dict of its arguments, "
                    f"got {type(boxes).__name__}")


def _is_norm(trunk: nn.Module, name: str) -> bool:
    module = trunk.get_submodule(name.rsplit(".", 1)[0]) if "." in name else trunk
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _per_anchor(d: Tensor, b: int) -> Tensor:
    """(B, A*4, H, W) -> (B, H*W*A, 4), the order torchvision flattens anchors in."""
    _, c, h, w = d.shape
    return d.view(b, c // 4, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)
