"""`InputSpec`: the one description of what a backbone takes as input.

A run records it in every checkpoint (``data_config``: the side of the square images and
the per-channel mean and standard deviation they were normalised with), and every
evaluator starts from it, so that a backbone trained on 84 px STL-10 crops is evaluated on
84 px inputs normalised the same way. What a task section gives explicitly wins, then the
checkpoint's record, then ImageNet's 224 px and statistics. Evaluations that resize before
a centre crop take `resize` too; it defaults to the 256/224 ratio of the transfer protocol
(arXiv:2011.13377).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from betaweighter.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DEFAULT_IMAGE_SIZE", "PAPER_RATIO", "InputSpec"]

DEFAULT_IMAGE_SIZE = 224
PAPER_RATIO = 256 / 224  # resize / crop of the transfer protocol's evaluation


@dataclass(frozen=True)
class InputSpec:
    """The input of a backbone: `image_size` px square images, normalised per channel by
    `mean` and `std` (of pixels in [0, 1]); `resize`, where an evaluation resizes before
    its centre crop (None: `crop_resize` derives it)."""

    image_size: int = DEFAULT_IMAGE_SIZE
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: int | None = None

    def __post_init__(self) -> None:
        for key in ("image_size", "resize"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or int(value) != value
                                      or value < 1):
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if self.resize is not None and self.resize < self.image_size:
            raise ValueError(f"need image_size <= resize, got image_size {self.image_size} "
                             f"and resize {self.resize}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(
                    values) != 3:
                raise ValueError(f"{key} needs 3 values (one per channel), got {values!r}")
            try:
                floats = tuple(float(v) for v in values)
            except (TypeError, ValueError):
                floats = (math.nan,)
            if isinstance(values[0], bool) or not all(math.isfinite(v) for v in floats):
                raise ValueError(f"{key} must be 3 finite numbers, got {values!r}")
            object.__setattr__(self, key, floats)
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std!r}")
        object.__setattr__(self, "image_size", int(self.image_size))

    @classmethod
    def resolve(cls, trained: Mapping[str, Any] | None = None, *,
                image_size: int | None = None, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, resize: int | None = None) -> InputSpec:
        """The given values where not None, else those of `trained` (a model's
        ``data_config``), else the defaults."""
        record = dict(trained or {})
        default = cls()
        return cls(image_size if image_size is not None
                   else record.get("image_size") or default.image_size,
                   tuple(mean if mean is not None else record.get("mean", default.mean)),
                   tuple(std if std is not None else record.get("std", default.std)),
                   resize)

    def crop_resize(self) -> tuple[int, int]:
        """(crop, resize) of a resize-then-centre-crop evaluation. The default resize keeps
        the protocol's 256/224 ratio, rounded so that resize - crop is even: the centre
        crop is then centred exactly, and a flip of the resized image is a flip of the
        crop."""
        if self.resize is not None:
            return self.image_size, self.resize
        resize = round(self.image_size * PAPER_RATIO)
        return self.image_size, resize + (resize - self.image_size) % 2

    def to_dict(self) -> dict[str, Any]:
        """``image_size``, ``mean`` and ``std`` as a checkpoint's ``data_config`` holds them."""
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}
