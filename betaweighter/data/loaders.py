"""Endless iteration over a DataLoader, for step-budgeted training loops."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["forever"]

T = TypeVar("T")


def forever(loader: Iterable[T]) -> Iterator[T]:
    """Yield the batches of `loader` again and again (a new pass, hence a new shuffle, each
    time round). An empty loader raises ValueError instead of spinning."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the data loader yields no batches: the dataset is empty or "
                             "smaller than one batch with drop_last=True")
