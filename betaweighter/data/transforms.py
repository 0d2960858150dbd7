"""Image transforms, and normalisation statistics measured on the data.

Pre-training (Ericsson et al., arXiv:2006.12360, STL-10): resize the short side, random
crop, random horizontal flip. Evaluation: resize and centre crop, *no* flip (the reference
code also flipped at evaluation by mistake; here evaluation is deterministic). Fine-tuning
(Ericsson et al., arXiv:2011.13377): random-resized crop and flip, bicubic.

Transforms accept a uint8 tensor (C, H, W), a PIL image or an (H, W, C) uint8 array, always
return a plain float tensor (3, crop, crop), and turn grey images into RGB first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2 as v2
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "as_uint8_chw", "channel_stats",
           "eval_transform", "finetune_transform", "train_transform"]

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR,
                  "bicubic": v2.InterpolationMode.BICUBIC}


def train_transform(resize: int, crop: int, mean: Sequence[float], std: Sequence[float],
                    flip: bool = True,
                    interpolation: str = "bilinear") -> Callable[[Any], Tensor]:
    """Resize(short side = `resize`) -> RandomCrop(`crop`) -> [RandomHorizontalFlip] ->
    float in [0, 1] -> Normalize(mean, std)."""
    steps = [v2.ToImage(), v2.RGB(), _resize(resize, interpolation), v2.RandomCrop(crop)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + _to_float(mean, std))


def eval_transform(resize: int, crop: int, mean: Sequence[float], std: Sequence[float],
                   interpolation: str = "bilinear") -> Callable[[Any], Tensor]:
    """Resize(short side = `resize`) -> CenterCrop(`crop`) -> float -> Normalize: the same
    output for the same image every time."""
    steps = [v2.ToImage(), v2.RGB(), _resize(resize, interpolation), v2.CenterCrop(crop)]
    return v2.Compose(steps + _to_float(mean, std))


def finetune_transform(size: int, mean: Sequence[float], std: Sequence[float],
                       interpolation: str = "bicubic") -> Callable[[Any], Tensor]:
    """RandomResizedCrop(`size`) -> RandomHorizontalFlip -> float -> Normalize: the
    fine-tuning augmentation of arXiv:2011.13377."""
    steps = [v2.ToImage(), v2.RGB(),
             v2.RandomResizedCrop(size, interpolation=_mode(interpolation), antialias=True),
             v2.RandomHorizontalFlip()]
    return v2.Compose(steps + _to_float(mean, std))


def _mode(interpolation: str) -> v2.InterpolationMode:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got "
                         f"{interpolation!r}")
    return INTERPOLATIONS[interpolation]


def _resize(size: int, interpolation: str) -> v2.Resize:
    return v2.Resize(size, interpolation=_mode(interpolation), antialias=True)


def _to_float(mean: Sequence[float], std: Sequence[float]) -> list:
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std need 3 values each, std > 0; got {mean} and {std}")
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.ToPureTensor()]


def as_uint8_chw(image: Any) -> Tensor:
    """A uint8 (3, H, W) tensor from a tensor, PIL image or (H, W, C) array."""
    out = v2.functional.to_image(image)
    if out.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {out.dtype}")
    if out.shape[0] == 1:
        out = out.expand(3, -1, -1)
    return out.as_subclass(Tensor)


def channel_stats(dataset: Any, indices: Sequence[int] | None = None, max_items: int = 5000,
                  seed: int = 0, desc: str = "channel statistics") -> Stats:
    """Per-channel mean and standard deviation, in [0, 1] units, of the raw images of
    `dataset` (items are an image or a tuple whose first element is one).

    At most `max_items` images are read, chosen with `seed`, so the result is reproducible
    and costs seconds even for ImageNet-sized domains; 5,000 images pin the mean down to
    about 1e-3. Every pixel of an image counts once, whatever its size.
    """
    pool = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    if pool.size == 0:
        raise ValueError(f"cannot compute {desc}: no images")
    if pool.size > max_items:
        pool = np.sort(np.random.default_rng(seed).choice(pool, max_items, replace=False))
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for i in tqdm(pool.tolist(), desc=desc, disable=None, leave=False):
        item = dataset[i]
        image = as_uint8_chw(item[0] if isinstance(item, (tuple, list)) else item)
        pixels = image.reshape(3, -1).to(torch.float64) / 255.0
        total += pixels.sum(1)
        total_sq += (pixels * pixels).sum(1)
        count += pixels.shape[1]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())  # type: ignore[return-value]
