"""Where code runs: the device to use and the processes of a distributed run.

`resolve_device` turns a device name from a config or the command line into a
`torch.device`, refusing names torch does not know and CUDA without a GPU with a
`ConfigError`. `world` and `is_main` describe a `torch.distributed` run (one process, rank 0,
outside one), so that only rank 0 writes files and shows progress bars.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar, cast

import torch
from torch import nn

from betaweighter.errors import BetaweighterError, ConfigError

__all__ = ["broadcast_object", "eval_mode", "finish_distributed", "init_distributed", "is_main",
           "meet_every_rank", "module_device", "on_main", "progress_disabled", "resolve_device",
           "world"]

T = TypeVar("T")


def resolve_device(name: str | torch.device | None = None, key: str = "device") -> torch.device:
    """`name` as a device; None or ``"auto"`` is the current CUDA GPU when there is one,
    else the CPU. A bare ``"cuda"`` is the current GPU (under torchrun, each process's own).
    `key` names the setting in error messages."""
    if isinstance(name, torch.device):
        device = name
    elif name is None or name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(str(name))
        except RuntimeError:
            raise ConfigError(f"{key}: unknown device {name!r}; use auto, cpu, cuda or "
                              "cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {str(device)!r} was asked for but no GPU is visible; "
                              "use auto or cpu")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {str(device)!r} does not exist; this machine has "
                              f"{torch.cuda.device_count()} GPU(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{key}: 'mps' was asked for but this machine has no Apple GPU "
                              "that torch can use (MPS); use auto or cpu")
    elif device.type != "cpu":
        raise ConfigError(f"{key}: device type {device.type!r} is not supported; use auto, "
                          "cpu, cuda or cuda:N")
    return device


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU when it has none)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(module: nn.Module | None) -> Iterator[None]:
    """`module` in eval mode inside the block, its own train/eval mode restored after (also
    on an error); None is allowed and does nothing."""
    if module is None:
        yield
        return
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


def world() -> tuple[int, int]:
    """(number of processes, this process's rank) under torch.distributed, else (1, 0)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def is_main() -> bool:
    """True on rank 0 (and outside a distributed run): the process that writes files."""
    return world()[1] == 0


def progress_disabled() -> bool | None:
    """tqdm's ``disable``: None (on when attached to a terminal) on rank 0, True elsewhere."""
    return None if is_main() else True


def init_distributed() -> bool:
    """Join the process group that ``torchrun`` describes in the environment (RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), with NCCL when GPUs are visible (one per
    local rank) and Gloo otherwise. Returns False when not launched by torchrun (or with a
    single process), True once joined."""
    import os

    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def finish_distributed(exit_code: int = 0) -> None:
    """Leave the process group at the end of a torchrun script: destroy it, and under Gloo
    end the process at once with `exit_code` (stdout and stderr flushed first).

    Gloo's worker threads can abort the interpreter's teardown after all work is done
    ("terminate called without an active exception", exit status -6, intermittently),
    which torchrun reports as a failed run; leaving before the teardown avoids it. Call it
    last, once every file is written. Does nothing outside a distributed run."""
    import os
    import sys

    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return
    gloo = dist.get_backend() == "gloo"
    dist.destroy_process_group()
    if gloo:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` on every rank (identity outside a distributed run)."""
    if world()[0] == 1:
        return obj
    holder = [obj]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def meet_every_rank(key: str, seconds: float = 10.0) -> None:
    """Wait, at most `seconds`, until every rank has called this with the same `key`: a
    meeting point in torchrun's key-value store, outside the collectives, so that it holds
    wherever the other ranks stopped (past `seconds` this process goes on alone). The
    command line meets here before it exits on a mistake or an interrupt, so that no rank
    leaves (and has torchrun stop the others) while another has not yet decided how it
    ends. Does nothing outside a distributed run."""
    import time

    size = world()[0]
    if size == 1:
        return
    try:
        store = torch.distributed.distributed_c10d._get_default_store()
        store.add(key, 1)
        deadline = time.monotonic() + seconds
        while store.add(key, 0) < size and time.monotonic() < deadline:
            time.sleep(0.02)
    except Exception:  # noqa: BLE001 - a store gone with its host: nobody left to wait for
        return


def on_main(fn: Callable[[], T]) -> T:
    """Call `fn` on rank 0 only and give its result to every rank (it must pickle).

    A check that only rank 0 makes (the run directory it creates, the run's lock) would
    otherwise leave the other ranks waiting in the next collective when it fails: here they
    learn of the failure at once, and raise a `BetaweighterError` too, so that every process
    stops at the same point and the command line exits with status 2 on each, with the one
    line printed by rank 0. Outside a distributed run this is just ``fn()``."""
    if world()[0] == 1:
        return fn()
    failure: BaseException | None = None
    result = None
    if is_main():
        try:
            result = fn()
        except BaseException as e:  # every rank must hear of it, whatever it is
            failure = e
    said = None if failure is None else (" ".join(str(failure).split())
                                         or type(failure).__name__)
    message, result = broadcast_object((said, result))
    if failure is not None:
        raise failure
    if message is not None:
        raise BetaweighterError(f"rank 0 stopped: {message}")
    return cast(T, result)  # rank 0's fn() returned it
