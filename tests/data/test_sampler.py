"""The epoch sampler: only the given instances, reproducible order, disjoint shards."""

from __future__ import annotations

import numpy as np

from betaweighter.data.sampler import SubsetEpochSampler


def test_visits_exactly_the_subset_in_a_seeded_order():
    subset = np.array([3, 8, 9, 20, 21, 40])
    state = {"epoch": 0}
    s = SubsetEpochSampler(lambda: (subset, state["epoch"]), seed=4)
    first = list(s)
    assert sorted(first) == subset.tolist() and len(s) == 6
    assert list(SubsetEpochSampler(lambda: (subset, 0), seed=4)) == first
    state["epoch"] = 1
    assert list(s) != first and sorted(s) == subset.tolist()
    assert list(SubsetEpochSampler(lambda: (subset, 0), shuffle=False)) == subset.tolist()


def test_shards_cover_everything_with_equal_lengths():
    subset = np.arange(0, 50, 7)  # 8 items
    shards = [list(SubsetEpochSampler(lambda: (subset, 2), seed=1, num_replicas=3, rank=r))
              for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert set().union(*shards) == set(subset.tolist())


def test_a_start_skips_in_the_next_pass_only_however_late_it_begins():
    """A resumed run sets `start` before the loader's pass begins (without workers, it
    begins only at the first batch drawn, with workers at once): that pass skips, and the
    next one visits everything, with nothing to reset in between."""
    import torch

    pool = torch.utils.data.TensorDataset(torch.arange(20))
    s = SubsetEpochSampler(lambda: (np.arange(20), 3), seed=2)
    full = list(s)
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(pool, batch_size=4, sampler=s,
                                             num_workers=workers)
        s.start = 8  # two batches of four done before the interruption
        batches = iter(loader)
        assert torch.cat([b for (b,) in batches]).tolist() == full[8:]
        assert s.start == 0
        assert torch.cat([b for (b,) in loader]).tolist() == full  # the next pass: all
