"""Two augmented views per image, for the contrastive and self-distillation pretexts.

The recipe is SimCLR's (Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for
Contrastive Learning of Visual Representations", ICML 2020, appendix A), built from
torchvision transforms and scaled to the image size: a random resized crop to the full
side (area 8 % to 100 %), a horizontal flip, colour jitter (brightness, contrast and
saturation 0.8 s, hue 0.2 s, applied with probability 0.8), grey scale with probability
0.2, and a Gaussian blur whose kernel is 10 % of the side (odd, at least 3 px) with sigma
in [0.1, 2]. MoCo v2 and SimSiam use the same recipe. BYOL (Grill et al., NeurIPS 2020,
table 6) makes the two views asymmetric: blur always on the first view and with
probability 0.1 on the second, solarisation with probability 0.2 on the second only.

The pools of this package yield images already normalised with the data's mean and std
(``DataBundle.mean``/``std``), but colour jitter needs values in [0, 1]: the pipelines
undo the normalisation, augment, and normalise again. With ``normalised_input=False``
they take raw images instead (PIL, uint8 or [0, 1] float tensors).

Layout. `MetaWeighter` weights `copies` *consecutive* rows per instance, so the two
views of image i go in as rows 2i and 2i + 1 (`interleave`); ``torch.cat([a, b])`` would
pair each weight with the wrong rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchvision.transforms.v2 as v2
from torch import Tensor, nn
from torch.utils.data import Dataset

from betaweighter.errors import LossShapeError

__all__ = ["RECIPES", "TwoViews", "ViewPool", "augment_pairs", "blur_kernel", "interleave",
           "simclr_view", "swap_views", "two_view_pipelines"]

RECIPES = ("simclr", "byol")
View = Callable[[Any], Tensor]


def blur_kernel(image_size: int) -> int:
    """SimCLR's blur kernel: 10 % of the image side, odd, at least 3 (23 px at 224)."""
    return max(3, 2 * int(0.05 * image_size) + 1)


class _Clamp01(nn.Module):
    """Clamp to [0, 1] (after undoing the normalisation, rounding can leave the range)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(0.0, 1.0)


def simclr_view(image_size: int, mean: Sequence[float], std: Sequence[float], *,
                normalised_input: bool = True, min_scale: float = 0.08, flip_prob: float = 0.5,
                jitter_prob: float = 0.8, jitter_strength: float = 1.0,
                grayscale_prob: float = 0.2, blur_prob: float = 0.5,
                solarize_prob: float = 0.0) -> v2.Compose:
    """One random view of an image, as a torchvision ``v2.Compose``.

    Input: an image normalised with (`mean`, `std`) (a float tensor (C, H, W)), or, with
    ``normalised_input=False``, a raw image. Output: a float tensor (3, `image_size`,
    `image_size`) normalised with (`mean`, `std`). Every call draws new parameters.
    `jitter_strength` is SimCLR's s (1.0 for ImageNet; 0.5 is common for 32 px images).
    """
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != len(std) or not mean or min(std) <= 0:
        raise ValueError(f"mean and std need one value per channel and std > 0, got {mean} "
                         f"and {std}")
    if int(image_size) != image_size or image_size < 4:
        raise ValueError(f"image_size must be an integer >= 4, got {image_size!r}")
    if not 0 < min_scale <= 1:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    for name, p in (("flip_prob", flip_prob), ("jitter_prob", jitter_prob),
                    ("grayscale_prob", grayscale_prob), ("blur_prob", blur_prob),
                    ("solarize_prob", solarize_prob)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    if jitter_strength < 0:
        raise ValueError(f"jitter_strength must be >= 0, got {jitter_strength}")
    if normalised_input:
        steps: list[Any] = [v2.Normalize([-m / s for m, s in zip(mean, std)],
                                         [1.0 / s for s in std]), _Clamp01()]
    else:
        steps = [v2.ToImage(), v2.RGB(), v2.ToDtype(torch.float32, scale=True)]
    s = float(jitter_strength)
    steps += [
        v2.RandomResizedCrop(int(image_size), scale=(min_scale, 1.0), antialias=True),
        v2.RandomHorizontalFlip(flip_prob),
        v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, min(0.2 * s, 0.5))],
                       p=jitter_prob),
        v2.RandomGrayscale(grayscale_prob),
        v2.RandomApply([v2.GaussianBlur(blur_kernel(int(image_size)), sigma=(0.1, 2.0))],
                       p=blur_prob),
        v2.RandomSolarize(0.5, p=solarize_prob),
        v2.Normalize(mean, std),
        v2.ToPureTensor(),
    ]
    return v2.Compose(steps)


def two_view_pipelines(recipe: str, image_size: int, mean: Sequence[float],
                       std: Sequence[float], **options: Any) -> tuple[View, View]:
    """The pair of view pipelines of `recipe`: ``"simclr"`` (the same pipeline twice; also
    MoCo v2's and SimSiam's) or ``"byol"`` (asymmetric blur and solarisation; an explicit
    `blur_prob` or `solarize_prob` in `options` applies to both views). `options` are
    `simclr_view`'s keyword arguments."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    if recipe == "simclr":
        view = simclr_view(image_size, mean, std, **options)
        return view, view
    first = {"blur_prob": 1.0, "solarize_prob": 0.0, **options}
    second = {"blur_prob": 0.1, "solarize_prob": 0.2, **options}
    return (simclr_view(image_size, mean, std, **first),
            simclr_view(image_size, mean, std, **second))


def interleave(first: Tensor, second: Tensor) -> Tensor:
    """Rows 2i and 2i + 1 of the result are ``first[i]`` and ``second[i]``: the layout
    `MetaWeighter` expects for two views per instance (``copies = 2``)."""
    if first.shape != second.shape:
        raise LossShapeError(f"the two views must line up one to one, got shapes "
                             f"{tuple(first.shape)} and {tuple(second.shape)}")
    return torch.stack([first, second], dim=1).flatten(0, 1)


def swap_views(t: Tensor) -> Tensor:
    """Exchange rows 2i and 2i + 1: each view's row gets its partner view's row."""
    if t.dim() == 0 or t.shape[0] % 2:
        raise LossShapeError(f"expected an even number of rows (two interleaved views per "
                             f"instance), got shape {tuple(t.shape)}")
    return t.view(-1, 2, *t.shape[1:]).flip(1).reshape(t.shape)


def augment_pairs(x: Tensor, first: View, second: View) -> Tensor:
    """Two random views of every image of a batch (B, C, H, W), interleaved (2B, C, H', W').

    Each image gets its own random parameters (torchvision's v2 transforms draw one set per
    call), from torch's global generator, so a seeded run is reproducible. A per-image loop:
    cheap next to a meta step at 32 to 96 px; for large images augment in the data loader
    instead (`ViewPool`)."""
    if x.dim() != 4:
        raise ValueError(f"expected a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    a = torch.stack([first(img) for img in x])
    b = torch.stack([second(img) for img in x])
    return interleave(a, b)


class TwoViews:
    """``TwoViews(first, second)(image)``: the two views stacked, shape (2, C, H, W); a
    dataset transform (``second`` defaults to ``first``)."""

    def __init__(self, first: View, second: View | None = None) -> None:
        self.first, self.second = first, second if second is not None else first

    def __call__(self, image: Any) -> Tensor:
        return torch.stack([self.first(image), self.second(image)])

    def __repr__(self) -> str:
        return f"TwoViews(first={self.first!r}, second={self.second!r})"


class ViewPool(Dataset):
    """A pool that yields ``(image, index)`` seen as ``(views, index)``: `views` is
    ``TwoViews``'s (2, C, H, W) stack, so the augmentation runs in the DataLoader's
    workers. A batch (B, 2, C, H, W) goes to `interleave` (``x.flatten(0, 1)``) or
    straight to a two-view pretext's ``batch``."""

    def __init__(self, pool: Any, views: TwoViews) -> None:
        if not hasattr(pool, "__len__") or not hasattr(pool, "__getitem__"):
            raise TypeError(f"ViewPool needs a map-style pool yielding (image, index), got "
                            f"{type(pool).__name__}")
        self.pool, self.views = pool, views

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image, index = self.pool[i]
        return self.views(image), int(index)
