"""A sampler over a changing subset of a dataset, reproducible epoch by epoch.

The pruning scheduler decides which instances an epoch visits; this sampler asks it at the
start of each epoch and yields only those, in an order drawn from (seed, epoch), so an epoch
costs time in proportion to the number kept, and a resumed run visits the same instances in
the same order. Under `torch.distributed`, each process takes an equal, disjoint share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

__all__ = ["epoch_rng", "SubsetEpochSampler"]

#: Separate random streams drawn from (seed, epoch, stream): changing how one is used never
#: changes another.
SHUFFLE_STREAM, RANDOM_RULE_STREAM, SKIP_STREAM = 0, 1, 2


def epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, stream)."""
    return np.random.default_rng([int(seed), int(epoch), int(stream)])


class SubsetEpochSampler(Sampler[int]):
    """Yields ``indices`` from ``source() -> (indices, epoch)``, shuffled by (seed, epoch).

    Args:
        source: called at the start of every pass; returns the instances to visit and the
            epoch number that seeds the order.
        seed: base seed of the order.
        shuffle: False visits the instances in increasing order.
        num_replicas, rank: split every epoch between `num_replicas` processes. Each
            index goes to exactly one process; to give every process the same count, the
            shuffled order is padded by wrapping around (like `DistributedSampler`), and
            `padding` tells which positions of a process's share are such repeats, so the
            training loop can give them zero weight.
    """

    def __init__(self, source: Callable[[], tuple[np.ndarray, int]], seed: int = 0,
                 shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got {rank} and {num_replicas}")
        self.source = source
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        #: skip this many of this process's indices in the next pass only (a run resumed in
        #: the middle of an epoch sets it): the pass takes the value when it begins and sets
        #: it back to 0, so it holds however late the loader draws its first batch
        self.start = 0

    def order(self) -> np.ndarray:
        """This process's indices for the current epoch, in visiting order."""
        indices, epoch = self.source()
        indices = np.asarray(indices, dtype=np.int64)
        if self.shuffle:
            indices = indices[epoch_rng(self.seed, epoch, SHUFFLE_STREAM).permutation(len(indices))]
        if self.num_replicas > 1 and len(indices):
            total = math.ceil(len(indices) / self.num_replicas) * self.num_replicas
            indices = np.resize(indices, total)[self.rank::self.num_replicas]
        return indices

    def padding(self, positions: np.ndarray | Sequence[int] | Any) -> Any:
        """A boolean tensor: which of this process's `positions` in the current epoch's
        share are padding (repeats added to equalise the shares)."""
        import torch

        n = len(self.source()[0])
        pos = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        return self.rank + pos * self.num_replicas >= n

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return iter(self.order()[start:].tolist())

    def __len__(self) -> int:
        n = len(self.source()[0])
        return math.ceil(n / self.num_replicas)
