"""Stopping a run cleanly: Ctrl-C (SIGINT) or SIGTERM ends it at a step boundary, agreed by
every process.

Job schedulers stop a job with SIGTERM (SLURM at the end of its time limit, Kubernetes when
it evicts a pod), so SIGTERM is handled as Ctrl-C is. The first signal only sets a flag;
the trainer checks it after each step (all processes of a torchrun job together, so that
none is left waiting in a collective), checkpoints that step and raises `Interrupted`,
which the command line turns into its resume line and the exit status of the signal (130
for SIGINT, 143 for SIGTERM, as a shell reports a process the signal ended). A second signal
stops at once, without a checkpoint. After the last epoch's checkpoint, while the end-of-run
work runs, there is no step to wait for: the first signal stops at once, and ``--resume``
does that work again.
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

__all__ = ["STOP_SIGNALS", "Interrupted", "StoppedAtOnce", "any_rank", "pending_signal",
           "stop_on_signals"]

#: the signals that stop a run cleanly
STOP_SIGNALS = ("SIGINT", "SIGTERM")


class Interrupted(Exception):
    """Training stopped on SIGINT or SIGTERM after a checkpoint of the last completed step.
    `status` is the exit status for the signal (128 + its number)."""

    def __init__(self, run_dir: Path, epoch: int, step: int,
                 signum: int = signal.SIGINT) -> None:
        self.run_dir, self.epoch, self.step = run_dir, epoch, step
        self.status = 128 + int(signum)
        super().__init__(f"interrupted; resume with: betaweighter run --resume {run_dir}")


class StoppedAtOnce(KeyboardInterrupt):
    """A second stop signal: the run ends at once, without a checkpoint of its last steps."""

    def __init__(self, signum: int) -> None:
        self.status = 128 + int(signum)
        super().__init__(f"stopped at once by signal {int(signum)}")


@contextlib.contextmanager
def stop_on_signals(trainer: Any) -> Iterator[None]:
    """Turn the first SIGINT or SIGTERM into a request to stop after the current step (the
    trainer checkpoints it and raises `Interrupted`); a second one stops at once. While
    ``trainer._finishing`` is true (the end-of-run work, after the last checkpoint) the
    first signal raises `Interrupted` at once."""
    if not _in_main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if getattr(trainer, "_finishing", False):
            raise Interrupted(trainer.run_dir, trainer.epoch, 0, signum)
        if trainer._stop_requested:
            raise StoppedAtOnce(signum)
        trainer._stop_requested = True
        trainer._stop_signal = signum

    kinds = [getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)]
    previous = {kind: signal.signal(kind, handler) for kind in kinds}
    try:
        yield
    finally:
        for kind, old in previous.items():
            signal.signal(kind, old)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any (one collective under torchrun)."""
    return _largest(1 if flag else 0) > 0


def pending_signal(trainer: Any) -> int:
    """The stop signal that any rank has received (its number; 0 when none), the same on
    every rank (one collective under torchrun): a job scheduler may signal one process of
    a job only, and every process must stop at the same step."""
    return _largest(int(trainer._stop_signal) if trainer._stop_requested else 0)


def _largest(value: int) -> int:
    if world()[0] == 1:
        return int(value)
    t = torch.tensor([float(value)])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())
