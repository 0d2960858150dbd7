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
