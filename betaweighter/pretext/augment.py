"""Augmentation presets for pre-training: choose which invariances the features may learn.

Ericsson, Gouk and Hospedales ("Why Do Self-Supervised Models Transfer?",
arXiv:2111.11398) pre-train with three policies: the usual one (crop, flip, colour jitter,
grayscale, blur), a spatial one (crop and flip: "ventral") and an appearance one (colour
jitter, grayscale, blur: "dorsal"). Models trained with them are invariant to different
things and suit different downstream tasks. The same choice is offered here, by name:

* ``"default"``: nothing added; the data pipeline's own transforms (STL-10: random crop
  and flip; the demo set: none), exactly as before this option existed;
* ``"spatial"``: random resized crop (scale 0.2 to 1) and horizontal flip;
* ``"appearance"``: colour jitter (0.4, 0.4, 0.4, 0.1; p 0.8), grayscale (p 0.2) and
  Gaussian blur (sigma 0.1 to 2 px; p 0.5);
* ``"all"``: both, the MoCo v2 policy the paper calls default;
* or a list of the parts: ``crop``, ``flip``, ``colour``, ``grayscale``, ``blur``.

Pool images reach the pretext as normalised float tensors, so `Augment` undoes the
normalisation, applies torchvision's random transforms to each image separately (its own
random draw per image, from torch's global generator, so a seeded run repeats), clamps to
[0, 1] and normalises again. Vertical flips are not offered: with rotation prediction a
vertical flip is a 180-degree rotation of the mirror image and would blur the labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms.v2 as v2
from torch import Tensor

__all__ = ["AUGMENTATIONS", "PRESETS", "Augment", "augment_parts"]

AUGMENTATIONS = ("crop", "flip", "colour", "grayscale", "blur")
PRESETS = {
    "default": (),
    "spatial": ("crop", "flip"),
    "appearance": ("colour", "grayscale", "blur"),
    "all": ("crop", "flip", "colour", "grayscale", "blur"),
}


def augment_parts(policy: str | Sequence[str]) -> tuple[str, ...]:
    """The parts of a preset name or of a custom list, checked (order kept, as in
    `AUGMENTATIONS` for presets)."""
    if isinstance(policy, str):
        if policy not in PRESETS:
            raise ValueError(f"unknown augmentation preset {policy!r}; choose one of "
                             f"{', '.join(PRESETS)} or a list of {', '.join(AUGMENTATIONS)}")
        return PRESETS[policy]
    parts = list(policy)
    unknown = [p for p in parts if p not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; a custom list takes "
                         f"{', '.join(AUGMENTATIONS)}")
    if len(set(parts)) != len(parts):
        raise ValueError(f"augmentation list {parts} names a part twice")
    return tuple(parts)


class Augment:
    """Per-image random augmentation of a normalised batch (B, C, H, W).

    ``Augment("spatial", mean, std)(x)`` returns a batch of the same shape, dtype and
    device. With no parts (``"default"``) it returns `x` itself and draws no random
    numbers, so a run's random stream is unchanged.
    """

    def __init__(self, policy: str | Sequence[str], mean: Sequence[float],
                 std: Sequence[float], crop_scale: tuple[float, float] = (0.2, 1.0)) -> None:
        self.parts = augment_parts(policy)
        self.policy = policy if isinstance(policy, str) else list(policy)
        self.mean = torch.as_tensor([float(m) for m in mean]).view(1, -1, 1, 1)
        self.std = torch.as_tensor([float(s) for s in std]).view(1, -1, 1, 1)
        if (self.std <= 0).any():
            raise ValueError(f"std must be positive, got {list(std)}")
        self.crop_scale = crop_scale
        self._pipelines: dict[tuple[int, int], v2.Compose] = {}

    def __bool__(self) -> bool:
        return bool(self.parts)

    def __repr__(self) -> str:
        return f"Augment({self.policy!r}: {', '.join(self.parts) or 'nothing'})"

    def pipeline(self, size: tuple[int, int]) -> v2.Compose:
        """The torchvision transforms for images of `size` (H, W) in [0, 1]."""
        if size not in self._pipelines:
            steps: list = []
            if "crop" in self.parts:
                steps.append(v2.RandomResizedCrop(size, scale=self.crop_scale, antialias=True))
            if "flip" in self.parts:
                steps.append(v2.RandomHorizontalFlip())
            if "colour" in self.parts:
                steps.append(v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8))
            if "grayscale" in self.parts:
                steps.append(v2.RandomGrayscale(p=0.2))
            if "blur" in self.parts:
                kernel = max(3, int(0.1 * min(size)) // 2 * 2 + 1)  # about 10 % of the side
                steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))],
                                            p=0.5))
            self._pipelines[size] = v2.Compose(steps)
        return self._pipelines[size]

    def __call__(self, x: Tensor) -> Tensor:
        if not self.parts:
            return x
        if x.dim() != 4:
            raise ValueError(f"Augment expects a batch (B, C, H, W), got {tuple(x.shape)}")
        mean, std = self.mean.to(x), self.std.to(x)
        images = (x.detach() * std + mean).clamp(0, 1)
        pipeline = self.pipeline((x.shape[-2], x.shape[-1]))
        out = torch.stack([pipeline(image) for image in images])
        return ((out.clamp(0, 1) - mean) / std).to(x.dtype)
