"""A subset of a raw dataset seen through a transform, with its labels at hand."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

__all__ = ["Transformed"]


class Transformed(Dataset):
    """``Transformed(raw, transform, indices)[k] == (transform(image), label)`` for the
    raw item ``raw[indices[k]] == (image, label)``.

    The raw datasets of this package return undecoded-to-float uint8 images, so one raw
    dataset can serve several views (a training view with augmentation for the pool, an
    evaluation view for the labelled target) without reading anything twice. ``targets``
    holds the labels of the view (from ``raw.targets``), so `labels_of` never decodes an
    image; it is -1 for unlabelled items.
    """

    def __init__(self, raw: Any, transform: Callable[[Any], Any] | None = None,
                 indices: Sequence[int] | np.ndarray | None = None) -> None:
        self.raw = raw
        self.transform = transform
        self.indices = (np.arange(len(raw), dtype=np.int64) if indices is None
                        else np.asarray(indices, dtype=np.int64).reshape(-1))
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(raw)):
            raise IndexError(f"indices outside [0, {len(raw)}) for a dataset of {len(raw)}")
        base = getattr(raw, "targets", None)
        self.targets = (np.full(len(self.indices), -1, dtype=np.int64) if base is None
                        else np.asarray(base, dtype=np.int64)[self.indices])

    def __len__(self) -> int:
        return len(self.indices)

    def fingerprint(self) -> str | None:
        """A digest of what this view yields (None when the raw data cannot describe
        itself), for feature caches."""
        raw = getattr(self.raw, "fingerprint", None)
        base = raw() if callable(raw) else None
        if base is None:
            return None
        h = hashlib.sha256(base.encode())
        h.update(repr(self.transform).encode())
        h.update(self.indices.tobytes())
        return h.hexdigest()

    def __getitem__(self, k: int) -> tuple[Any, int]:
        image, label = self.raw[int(self.indices[k])]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(label)
