"""Rotation prediction (Gidaris, Singh and Komodakis, ICLR 2018).

Every image is turned into four copies rotated by 0, 90, 180 and 270 degrees and the
network predicts which. `torch.rot90` on the (already normalised) tensor keeps this
batched, on the device, and exact; the reference code of Ericsson et al. went through PIL,
which corrupted normalised values and permuted the labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from betaweighter.pretext.base import Pretext, PretextBatch, register_pretext

__all__ = ["RotationPretext", "rotate4", "rotation_loss"]


def rotate4(x: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate a batch (B, C, H, W) four ways.

    Returns (images (4B, C, H, W), labels (4B,)). Rows 4i..4i+3 are image i at 0, 90,
    180 and 270 degrees (counter-clockwise), so ``w.repeat_interleave(4)`` lines per-image
    weights up with the copies. Labels are int64 on x's device.
    """
    if x.dim() != 4:
        raise ValueError(
            f"rotate4 expects a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"rotate4 needs square images so that rotated copies stack, got {x.shape[-2]}x"
            f"{x.shape[-1]}: crop or resize them first (e.g. torchvision CenterCrop)")
    copies = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)], dim=1)
    labels = torch.arange(4, device=x.device).repeat(x.shape[0])
    return copies.flatten(0, 1), labels


def rotation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample cross-entropy of the rotation prediction (shape (4B,))."""
    return F.cross_entropy(logits, labels, reduction="none")


@register_pretext("rotation")
class RotationPretext(Pretext):
    """Rotation prediction with `backbone`, whose head must have 4 outputs."""

    copies = 4

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        head = getattr(backbone, "head", None)
        if isinstance(head, nn.Linear) and head.out_features != 4:
            raise ValueError(f"rotation prediction needs a 4-way head, the backbone's has "
                             f"{head.out_features} outputs")
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def batch(self, x: Tensor) -> PretextBatch:
        inputs, labels = rotate4(x)
        return PretextBatch(inputs, lambda out: rotation_loss(out, labels), self.copies)
