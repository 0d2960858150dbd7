"""Replay torch's random state, so a recomputed forward draws the same random numbers.

The fast meta-gradients recompute the per-sample losses in a second pass (forward mode, or
two finite-difference passes) and need that pass to be the same function as the training
forward. A model with Dropout, stochastic depth or any other layer that draws from torch's
generators would otherwise see different masks in the second pass. `RandomState` captures
the CPU generator (and the current CUDA device's) before the training forward, and
`replay()` restores it for the duration of a recomputation, leaving the generators as they
were afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["RandomState"]


class RandomState:
    """A snapshot of torch's random generators on the CPU and on `device`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block with the generators as captured; restore them afterwards."""
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield
