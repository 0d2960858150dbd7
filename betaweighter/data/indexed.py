"""Wrap any dataset so that it yields (input, index): the index picks the instance's weight."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

__all__ = ["Indexed"]


class Indexed(Dataset):
    """``Indexed(ds)[i] == (x_i, i)`` where x_i is ``ds[i]``, or its first element when
    ``ds[i]`` is a tuple (labels of an unlabelled pool are dropped: SSL does not see them)."""

    def __init__(self, dataset: Any) -> None:
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(
                f"Indexed needs a map-style dataset with __len__ and __getitem__, got "
                f"{type(dataset).__name__}"
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        item = self.dataset[index]
        if isinstance(item, (tuple, list)):
            item = item[0]
        return item, int(index)
