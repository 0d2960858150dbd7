"""Read the class labels of a labelled dataset without decoding its images when possible."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["labels_of"]

_LABEL_ATTRIBUTES = ("targets", "labels", "y")


def labels_of(dataset: Any) -> np.ndarray:
    """Integer labels of every item of a dataset that yields (input, label).

    Uses a ``targets``/``labels``/``y`` attribute when the dataset has one (torchvision
    datasets do; `Subset` is followed through its indices), else reads every item once.
    """
    from torch.utils.data import Subset, TensorDataset

    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return np.asarray(dataset.tensors[1].cpu().numpy()).astype(np.int64).reshape(-1)
    for attr in _LABEL_ATTRIBUTES:
        value = getattr(dataset, attr, None)
        if value is not None and len(value) == len(dataset):
            return np.asarray(value).astype(np.int64).reshape(-1)
    labels = []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ValueError(
                "a labelled target dataset must yield (input, label) pairs; item "
                f"{i} is a {type(item).__name__}"
            )
        labels.append(int(item[1]))
    return np.asarray(labels, dtype=np.int64)
