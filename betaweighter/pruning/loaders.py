"""The loop of a run without pruning: the whole pool in the order `PruningScheduler` uses."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from betaweighter.data.sampler import SubsetEpochSampler
from betaweighter.runtime import world

__all__ = ["unpruned_loader", "unpruned_sampler"]


def unpruned_loader(pool: Any, epoch: Any, batch_size: int, seed: int = 0,
                    **dataloader_kwargs: Any) -> DataLoader:
    """A DataLoader over the whole pool in the same reproducible order as
    `PruningScheduler.loader` (drawn from (seed, epoch)), sharded across processes under
    torch.distributed: the loop of a run without pruning. `epoch` is a callable returning
    the current epoch."""
    return DataLoader(pool, batch_size=batch_size, sampler=unpruned_sampler(len(pool), epoch,
                                                                            seed),
                      **dataloader_kwargs)


def unpruned_sampler(size: int, epoch: Any, seed: int = 0) -> SubsetEpochSampler:
    """The sampler of `unpruned_loader`: all `size` instances, in an order drawn from
    (seed, epoch()), this process's share of them under torch.distributed."""
    replicas, rank = world()
    everything = np.arange(size)
    return SubsetEpochSampler(lambda: (everything, epoch()), seed, num_replicas=replicas,
                              rank=rank)
