"""Random transforms drawn from (seed, epoch, instance), whichever process loads the image.

A pool's training transform (the random crop and flip of `train_transform`) draws from the
torch random stream of the process that loads the image: the main process without
DataLoader workers, each worker's own stream with them. The crops then depend on the number
of workers and on which worker loads which batch, and a resumed run, whose workers start
afresh, draws other crops than the run it continues. `SeededItems` draws each item's
randomness from a seed made of (seed, epoch, index) instead, and gives the caller's random
state back untouched, so that a run is the same with any number of workers and after any
resume. `EpochKeys` tells it the epoch through the sampler: a persistent worker's copy of
the dataset cannot see the main process's epoch change.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from betaweighter.data.sampler import SubsetEpochSampler

__all__ = ["EpochKeys", "SeededItems", "item_seed"]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, index)."""
    words = [int(seed) % 2**64, int(epoch), int(index)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


class EpochKeys(Sampler[tuple[int, int]]):
    """``(index, epoch)`` for each index that `sampler` yields, the epoch being the one its
    pass is drawn for: the keys `SeededItems` takes."""

    def __init__(self, sampler: SubsetEpochSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = int(self.sampler.source()[1])
        return ((int(i), epoch) for i in self.sampler)  # the sampler's pass begins here

    def __len__(self) -> int:
        return len(self.sampler)


class SeededItems(Dataset):
    """``SeededItems(pool, seed)[(i, epoch)] == pool[i]``, with torch's CPU generator (what
    torchvision's random transforms draw from) seeded by ``item_seed(seed, epoch, i)`` for
    the call and restored after it. A plain integer key reads ``pool[i]`` unseeded."""

    def __init__(self, pool: Any, seed: int) -> None:
        self.pool = pool
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self.pool[key]
        index, epoch = key
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(item_seed(self.seed, epoch, index))
        try:
            return self.pool[index]
        finally:
            torch.set_rng_state(state)
