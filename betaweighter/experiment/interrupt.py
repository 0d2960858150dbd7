"""Stopping a run cleanly: Ctrl-C ends it at a step boundary, agreed by every process.

The first SIGINT only sets a flag; the trainer checks it after each step (all processes of a
torchrun job together, so that none is left waiting in a collective), checkpoints that step
and raises `Interrupted`. A second SIGINT interrupts at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from betaweighter.runtime import world

__all__ = ["Interrupted", "any_rank", "stop_on_sigint"]


class Interrupted(Exception):
    """Training stopped on SIGINT after a checkpoint of the last completed step."""

    def __init__(self, run_dir: Path, epoch: int, step: int) -> None:
        self.run_dir, self.epoch, self.step = run_dir, epoch, step
        super().__init__(f"interrupted; resume with: betaweighter run --resume {run_dir}")


@contextlib.contextmanager
def stop_on_sigint(trainer: Any) -> Iterator[None]:
    """Turn the first Ctrl-C into a request to stop after the current step (the trainer
    checkpoints it and raises `Interrupted`); a second Ctrl-C interrupts at once."""
    if not hasattr(signal, "SIGINT") or not _in_main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if trainer._stop_requested:
            raise KeyboardInterrupt
        trainer._stop_requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any (one collective under torchrun)."""
    if world()[0] == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())
