"""Backbones split into ``features(x)`` (an embedding per image) and a ``head``.

The pretext task trains ``head(features(x))``; meta objectives and transfer evaluators use
``features`` alone. All are randomly initialised: nothing is downloaded.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

ARCHITECTURES = ("convnet", "resnet18", "resnet50")


class Backbone(nn.Module):
    """``forward(x) = head(features(x))``; ``feature_dim`` is the embedding size."""

    feature_dim: int

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_dim = int(feature_dim)
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def replace_head(self, num_classes: int) -> Backbone:
        """A new, randomly initialised head (for fine-tuning on another label set)."""
        self.head = nn.Linear(self.feature_dim, num_classes).to(self.head.weight.device)
        return self


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def conv_net(num_classes: int = 4, in_channels: int = 3, width: int = 64,
             blocks: int = 4) -> Backbone:
    """The small 4-block conv net of few-shot learning (Vinyals et al., NeurIPS 2016):
    conv3x3-BN-ReLU-maxpool blocks, then global average pooling (so any input size works)."""
    if blocks < 1 or width < 1:
        raise ValueError(f"blocks and width must be >= 1, got {blocks} and {width}")
    layers = [_conv_block(in_channels, width)]
    layers += [_conv_block(width, width) for _ in range(blocks - 1)]
    encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
    return Backbone(encoder, width, num_classes)


def resnet(arch: str = "resnet18", num_classes: int = 4) -> Backbone:
    """torchvision ResNet-18/50 with the standard ImageNet stem, randomly initialised;
    `features` is everything up to the global pool (512-d or 2048-d)."""
    if arch not in ("resnet18", "resnet50"):
        raise ValueError(f"arch must be 'resnet18' or 'resnet50', got {arch!r}")
    net = getattr(torchvision.models, arch)(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return Backbone(net, dim, num_classes)


def build_model(name: str, num_classes: int = 4, **kwargs) -> Backbone:
    """Build a backbone by name: one of ARCHITECTURES."""
    if name == "convnet":
        return conv_net(num_classes, **kwargs)
    if name in ("resnet18", "resnet50"):
        return resnet(name, num_classes)
    raise ValueError(f"unknown model {name!r}; choose one of {ARCHITECTURES}")


def feature_dim(model: nn.Module, example: Tensor) -> int:
    """Embedding size of ``model.features`` for inputs shaped like `example` (one image)."""
    with torch.no_grad():
        was = model.training
        model.eval()
        d = model.features(example.unsqueeze(0)).flatten(1).shape[1]
        model.train(was)
    return d
