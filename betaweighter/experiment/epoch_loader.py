"""The batches a run trains on, one epoch at a time, from any step of the epoch.

A run visits its pool through the sampler of `PruningScheduler.loader` (the kept instances
only) or, without pruning, that of `unpruned_loader`; both draw the order from (seed,
epoch), so a resumed run visits the same instances in the same order. Four more things make
a run the same whatever ``data.workers`` is, and one stopped in the middle of an epoch
resume bitwise exactly:

- the sampler skips the batches the run already trained on: `SubsetEpochSampler.start`,
  which the pass takes when it begins (with workers the loader begins at once, without them
  only at the first batch, after the trainer has moved on);
- each image's random transform (crop, flip) is drawn from (seed, epoch, index), not from
  the stream of the process that loads it (`data.seeded.SeededItems`);
- the loader draws its workers' seed from its own generator, never from torch's global
  one, so that the global random stream (the Beta samples, the augmentation on the device)
  does not depend on the number of workers or on when they were started;
- the workers ignore SIGINT and SIGTERM, which a terminal's Ctrl-C or a job scheduler
  sends to the whole process group: the main process alone decides where to stop, writes
  the checkpoint, and ends them (`close`).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from torch.utils.data import DataLoader

from betaweighter.data.seeded import EpochKeys, SeededItems
from betaweighter.pruning import unpruned_sampler
from betaweighter.runtime import world

__all__ = ["EpochLoader", "ignore_stop_signals"]


def ignore_stop_signals(worker_id: int) -> None:
    """`worker_init_fn` of the training loader: a worker ignores SIGINT and SIGTERM (the main
    process stops it), so that a signal sent to the process group cannot kill it mid-batch
    and fail the main process's clean stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class EpochLoader:
    """The training loader of one run (`c` its components, `cfg` its config, `epoch` a
    callable giving the current epoch, which seeds the order when nothing is pruned)."""

    def __init__(self, c: Any, cfg: Any, epoch: Callable[[], int]) -> None:
        self.c, self.cfg, self._epoch = c, cfg, epoch
        seed = cfg.experiment.seed * 1_000_003 + world()[1]
        self._generator = torch.Generator().manual_seed(seed)
        self._loader: DataLoader | None = None

    def loader(self) -> DataLoader:
        """The loader of the run (the same object from epoch to epoch, so that persistent
        workers live on). Its `sampler` yields (index, epoch) keys; ``.sampler.sampler``
        is the `SubsetEpochSampler` of the indices."""
        if self._loader is None:
            c, cfg = self.c, self.cfg
            pool, workers = c.bundle.pool, cfg.data.workers
            sampler = (c.pruner.sampler() if c.pruner is not None
                       else unpruned_sampler(len(pool), self._epoch, cfg.experiment.seed))
            self._loader = DataLoader(
                SeededItems(pool, cfg.experiment.seed), batch_size=cfg.train.batch_size,
                sampler=EpochKeys(sampler), num_workers=workers,
                pin_memory=c.device.type == "cuda", persistent_workers=workers > 0,
                generator=self._generator,
                worker_init_fn=ignore_stop_signals if workers > 0 else None)
        return self._loader

    def epoch(self, step: int) -> tuple[Iterator[Any], Any, int]:
        """(the batches of the current epoch from batch `step` on, the sampler, the number
        of batches the epoch has in all, ``train.max_steps_per_epoch`` applied)."""
        loader = self.loader()
        sampler = cast(EpochKeys, loader.sampler).sampler
        sampler.start = step * self.cfg.train.batch_size
        limit = self.cfg.train.max_steps_per_epoch
        total = len(loader) if limit is None else min(len(loader), limit)
        return iter(loader), sampler, total

    def close(self) -> None:
        """End the workers now. They were forked with the run's open files, its lock among
        them: left alive, they would hold the lock after the run has closed."""
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            assert self._loader is not None  # it has an iterator
            self._loader._iterator = None
