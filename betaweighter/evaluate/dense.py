"""The spatial feature map of a backbone, for dense prediction heads.

A `Backbone`'s ``features`` end in a global pool; a segmentation head needs the map before
it. `spatial_trunk` returns a copy of the encoder without its pool, the number of channels
of its map and its output stride (input pixels per feature-map cell), for the two encoders
this library builds:

* a torchvision ResNet (``fc`` = Identity): the stem and ``layer1..layer4``; stride 32,
  or 16 or 8 with the last stages dilated instead of strided (`dilate_resnet`), as
  torchvision's FCN and DeepLabV3 models and DeepLab (Chen et al., arXiv:1706.05587) do;
* an ``nn.Sequential`` of conv blocks ending in ``AdaptiveAvgPool2d`` (the small conv
  net): the blocks; the stride is the product of their convolution and pooling strides.

Anything else (a fused backbone, another encoder) is refused with a `TypeError` whose
message says why.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from betaweighter.evaluate.fusion import FusedBackbone

__all__ = ["OUTPUT_STRIDES", "SpatialTrunk", "dilate_resnet", "spatial_trunk"]

OUTPUT_STRIDES = (8, 16, 32)
_DILATED = {32: (), 16: ("layer4",), 8: ("layer3", "layer4")}


@dataclass
class SpatialTrunk:
    """``module(x)`` is a (N, `channels`, H / `stride`, W / `stride`) feature map (sizes
    rounded down by the strided layers)."""

    module: nn.Module
    channels: int
    stride: int


def dilate_resnet(trunk: ResNet, output_stride: int) -> ResNet:
    """Make a ResNet's output stride `output_stride` (8, 16 or 32), in place: each of the
    last stages that would halve the map keeps its size and doubles the dilation of its
    3x3 convolutions instead, exactly as torchvision's ``replace_stride_with_dilation``
    builds it (the first block of a stage keeps the previous dilation). Both 3x3
    convolutions of a BasicBlock (ResNet-18) dilate, which torchvision does not offer. The
    weights stay the same; only strides, dilations and paddings change."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    dilation = 1
    for name in _DILATED[output_stride]:
        previous, dilation = dilation, dilation * 2
        for i, block in enumerate(getattr(trunk, name)):
            d = previous if i == 0 else dilation
            convs = [block.conv2] if isinstance(block, Bottleneck) else [block.conv1, block.conv2]
            for conv in convs:
                conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
    return trunk


def spatial_trunk(backbone: nn.Module, output_stride: int | None = None) -> SpatialTrunk:
    """A copy of `backbone`'s encoder up to its global pool (the backbone is untouched).

    `output_stride` applies to ResNets (None: 8, torchvision's segmentation models); the
    conv net keeps its own stride, and asking it for another raises ValueError.
    """
    if isinstance(backbone, FusedBackbone):
        raise TypeError(
            f"dense prediction cannot use a fused backbone ({len(backbone.members)} members): "
            "fused features exist only after each member's global pool. Evaluate each "
            "member's checkpoint instead")
    encoder = getattr(backbone, "encoder", backbone)
    if isinstance(encoder, ResNet):
        stride = 8 if output_stride is None else output_stride
        trunk = dilate_resnet(copy.deepcopy(encoder), stride)
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        module = nn.Sequential(OrderedDict((n, getattr(trunk, n)) for n in names))
        last = trunk.layer4[-1]
        channels = (last.bn3 if isinstance(last, Bottleneck) else last.bn2).num_features
        return SpatialTrunk(module, channels, stride)
    if (isinstance(encoder, nn.Sequential) and len(encoder) > 1
            and isinstance(encoder[-1], nn.AdaptiveAvgPool2d)):
        convs = [m for m in encoder[:-1].modules() if isinstance(m, nn.Conv2d)]
        if convs:
            stride = math.prod(_stride(m) for m in encoder[:-1].modules())
            if output_stride is not None and output_stride != stride:
                raise ValueError(f"output_stride {output_stride} needs a ResNet: this conv "
                                 f"net's feature map has stride {stride} (leave it null)")
            return SpatialTrunk(copy.deepcopy(encoder[:-1]), convs[-1].out_channels, stride)
    raise TypeError(
        f"dense prediction needs the spatial feature map of a torchvision ResNet or of the "
        f"conv net (conv blocks, then AdaptiveAvgPool2d); this checkpoint's encoder is a "
        f"{type(encoder).__name__}")


def _stride(module: nn.Module) -> int:
    """How much `module` itself shrinks the map (1 for containers and point-wise layers)."""
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        s = module.stride
        return int(s[0] if isinstance(s, tuple) else s)
    return 1
