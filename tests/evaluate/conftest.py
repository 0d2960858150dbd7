"""The evaluator tests run on one thread."""

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def _single_threaded():
    """These tensors are tiny: with several threads (on a shared, loaded machine) the
    hand-offs cost up to 100x the work itself, so every test runs on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)
