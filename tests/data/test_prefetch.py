"""The episode prefetcher: the same batches as loading on the spot, one call ahead."""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch.utils.data import Dataset

import betaweighter as bw
from betaweighter.data.prefetch import Prefetcher, stack_items


class Recording(Dataset):
    """Labelled images that note which thread read each item."""

    def __init__(self, n: int = 40, classes: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.targets = [i % classes for i in range(n)]
        self.threads: set[str] = set()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.threads.add(threading.current_thread().name)
        return self.x[i], self.targets[i]


class Embed:
    """A look-ahead model stand-in: a device, the module, and features = the pixels."""

    device = torch.device("cpu")

    @property
    def module(self):
        return self

    def features(self, x):
        return x.flatten(1)


def test_prefetched_episodes_equal_episodes_loaded_on_the_spot():
    plain = bw.PrototypicalLoss(3, 2, 2, seed=5).bind(Recording())
    data = Recording()
    ahead = bw.PrototypicalLoss(3, 2, 2, seed=5, prefetch=True).bind(data)
    model = Embed()
    for _ in range(6):
        assert torch.equal(plain(model), ahead(model))
    assert ahead._loader.hits == 5  # every call after the first was ready in advance
    assert any(name.startswith("betaweighter-prefetch") for name in data.threads)
    # a resumed objective (calls moved) never gets the stale batch that was prepared
    ahead.load_state_dict({"calls": 2})
    plain.load_state_dict({"calls": 2})
    assert torch.equal(plain(model), ahead(model))
    assert ahead._loader.hits == 5
    ahead._loader.close()


def test_prefetcher_keys_and_stacking():
    data = Recording(10, 2)
    loader = Prefetcher(data)
    idx = np.array([3, 1, 4])
    loader.ahead("a", idx)
    x, y = loader.get("b", np.array([0, 2]))  # another key: loaded on the spot
    assert torch.equal(x, data.x[[0, 2]]) and y.tolist() == [0, 0]
    loader.ahead("a", idx)
    x, y = loader.get("a", idx)
    ref = stack_items(data, idx)
    assert torch.equal(x, ref[0]) and torch.equal(y, ref[1]) and loader.hits == 1
    loader.close()
    import copy

    clone = copy.deepcopy(loader)  # no thread to copy
    assert torch.equal(clone.get("c", idx)[0], ref[0])


def test_a_fork_waits_for_the_batch_being_read():
    """Before any fork (a DataLoader starting workers) the pending read finishes, so the
    child never inherits a lock held by the reading thread."""
    import time

    from betaweighter.data import prefetch

    class Slow(Recording):
        def __getitem__(self, i):
            time.sleep(0.05)
            return super().__getitem__(i)

    loader = Prefetcher(Slow(8, 2))
    loader.ahead(0, np.arange(6))
    future = loader._ahead[1]
    assert not future.done()
    prefetch._settle_before_fork()  # what os.register_at_fork runs before a fork
    assert future.done()
    loader.close()
