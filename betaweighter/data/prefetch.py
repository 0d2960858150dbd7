"""Load the next labelled batch in a background thread while the current step runs.

A meta objective draws a labelled episode at every meta update (200 images at the paper's
10-way 10-shot 10-query). Read one item at a time on the main process, the episode sits on
the critical path of the step: the accelerator waits while images are decoded. Because an
objective knows the indices of its next batch in advance (episode k+1 is a pure function
of the seed and k), `Prefetcher` gathers it in a worker thread during step k, and the step
only pays for the copy to the device.

Decoding and tensor transforms release the GIL, so a thread overlaps them with the
training step. The thread must not draw random numbers: items are read with whatever
transform the dataset applies, so use it only for datasets whose items are the same every
time they are read (the evaluation transforms the trainer's target data use). A dataset
with random augmentation would draw from torch's global generator on another thread and
make runs irreproducible.

A process that forks while the thread is reading (a DataLoader starting its worker
processes at the start of an epoch) could hand the child a lock that no thread will ever
release. So before any fork, every pending batch is allowed to finish (`os.register_at_fork`),
and the fork happens while the thread sits idle.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Hashable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Prefetcher", "stack_items"]


def stack_items(dataset: Any, indices: np.ndarray) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` of ``dataset[i]`` for each index, stacked on the CPU."""
    items = [dataset[int(i)] for i in indices]
    x = torch.stack([torch.as_tensor(it[0]) for it in items])
    y = torch.as_tensor([int(it[1]) for it in items])
    return x, y


_LIVE: weakref.WeakSet[Prefetcher] = weakref.WeakSet()


def _settle_before_fork() -> None:
    pending = [p._ahead[1] for p in list(_LIVE) if p._ahead is not None]
    if pending:
        wait(pending)


os.register_at_fork(before=_settle_before_fork)


class Prefetcher:
    """Gathers ``stack_items(dataset, indices)`` for a key one call ahead.

    ``get(key, indices)`` returns the batch for `key`: the one prepared by the last
    ``ahead(key, indices)`` if the keys match, else it loads it now. Keys name the batch
    (an episode number), so a resumed or rewound objective never receives a stale one.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: tuple[Hashable, Future] | None = None
        self.hits = 0

    def get(self, key: Hashable, indices: np.ndarray) -> tuple[Tensor, Tensor]:
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == key:
            self.hits += 1
            return ahead[1].result()
        return stack_items(self.dataset, indices)

    def ahead(self, key: Hashable, indices: np.ndarray) -> None:
        """Start loading the batch `key` in the background."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="betaweighter-prefetch")
            _LIVE.add(self)
        self._ahead = (key, self._pool.submit(self._load, indices))

    def _load(self, indices: np.ndarray) -> tuple[Tensor, Tensor]:
        x, y = stack_items(self.dataset, indices)
        if torch.cuda.is_available():  # page-locked, so the copy to the GPU can overlap
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def close(self) -> None:
        """Stop the worker thread (a later `ahead` starts a new one)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool, self._ahead = None, None

    def __getstate__(self) -> dict[str, Any]:  # threads do not copy or pickle
        return {"dataset": self.dataset, "_pool": None, "_ahead": None, "hits": self.hits}
