"""Episodes: a function of (seed, stream, index), class-major, with a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from betaweighter.data import EpisodeSampler
from betaweighter.errors import DataError

LABELS = np.repeat(np.arange(6), 5)


def test_episode_is_a_function_of_seed_stream_and_index():
    a, b = EpisodeSampler(LABELS, 3, 2, 2, seed=1), EpisodeSampler(LABELS, 3, 2, 2, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a.sample(7), b.sample(7)))
    assert not np.array_equal(a.sample(7)[0], a.sample(8)[0])
    assert not np.array_equal(a.sample(7, stream=1)[0], a.sample(7)[0])
    support, query, classes = a.sample(0)
    assert support.shape == (6,) and query.shape == (6,) and len(set(classes)) == 3
    assert [LABELS[i] for i in support] == np.repeat(classes, 2).tolist()  # class-major
    assert not set(support) & set(query)


def test_too_few_classes_is_a_data_error():
    with pytest.raises(DataError, match="5-way 2-shot 2-query episode needs 5 classes"):
        EpisodeSampler(np.repeat(np.arange(4), 5), 5, 2, 2)
    with pytest.raises(ValueError, match="way must be >= 1"):
        EpisodeSampler(LABELS, 0, 1, 1)
