"""An in-memory image dataset: a float tensor of images and, optionally, their labels."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["TensorImages"]


class TensorImages(Dataset):
    """``TensorImages(images, targets)[i] == (images[i], targets[i])`` (label -1 when
    `targets` is None). Holding ready-normalised tensors makes an item a view: no decoding,
    no per-item transform, so an epoch's cost is the model's alone."""

    def __init__(self, images: Tensor, targets: Any = None) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise ValueError("images must be a tensor of shape (N, C, H, W)")
        self.images = images
        self.targets = (np.full(len(images), -1, np.int64) if targets is None
                        else np.asarray(targets, dtype=np.int64).reshape(-1))
        if len(self.targets) != len(images):
            raise ValueError(f"{len(self.targets)} labels for {len(images)} images")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.targets[i])
