"""Random transforms drawn from (seed, epoch, index): the same with or without DataLoader
workers, the same when a pass starts in the middle, and the caller's random state kept."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from betaweighter.data.sampler import SubsetEpochSampler
from betaweighter.data.seeded import EpochKeys, SeededItems


class Jittered(Dataset):
    """An item plus noise drawn from torch's global stream, as a random crop draws."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((2,), float(i)) + torch.rand(2), i


def _batches(workers: int, epoch: int, start: int = 0) -> list[torch.Tensor]:
    sampler = SubsetEpochSampler(lambda: (np.arange(24), epoch), seed=5)
    sampler.start = start
    loader = DataLoader(SeededItems(Jittered(), seed=3), batch_size=4,
                        sampler=EpochKeys(sampler), num_workers=workers,
                        generator=torch.Generator())  # else it draws its workers' seed
    return [x for x, _ in loader]


def test_the_draws_do_not_depend_on_workers_or_on_where_a_pass_starts():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    plain = _batches(0, epoch=1)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's stream is untouched
    assert all(torch.equal(a, b) for a, b in zip(_batches(2, epoch=1), plain, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(_batches(0, 1, start=8), plain[2:],
                                                 strict=True))  # a resumed pass
    other = torch.cat(_batches(0, epoch=2)).sort(dim=0).values
    assert not torch.equal(other, torch.cat(plain).sort(dim=0).values)  # new epoch, new draws
    item = Jittered()[5][0]  # unseeded, the draws are those of the caller's stream
    assert not torch.equal(item, SeededItems(Jittered(), 3)[(5, 1)][0])
