"""The collectives `MetaWeighter` needs under `torch.distributed`; identities otherwise.

Under DistributedDataParallel every process sees its own shard of each batch. For the
per-instance weights to stay bitwise identical on every rank without broadcasting all N
rows, each meta step exchanges only what the batch produced:

* the meta direction v (the gradient of the target objective at the look-ahead point) is
  averaged, so every rank differentiates the same objective;
* the rows of the weighting parameters' gradients are gathered (instance index, gradient
  row) from every rank and summed in rank order on every rank, so all ranks apply the same
  update to the same rows;
* a per-step rule (L2RW, loss heuristics) runs on the gathered global batch on every rank,
  so its running statistics agree too.

All gathers pad to the largest shard (the last batch of an epoch may differ in size).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from betaweighter.runtime import world
from betaweighter.weights.base import InstanceWeights

__all__ = ["all_gather_rows", "assert_identical", "average_", "is_ddp", "sum_",
           "sum_weight_grads", "unwrap"]


def is_ddp(model: nn.Module) -> bool:
    return isinstance(model, DistributedDataParallel)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP (or torch.compile) wrapper, the model itself otherwise."""
    if is_ddp(model):
        model = cast(DistributedDataParallel, model).module
    return getattr(model, "_orig_mod", model)


def _flat_reduce(tensors: list[Tensor], average: bool) -> None:
    size, _ = world()
    if size == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    if average:
        flat /= size
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def average_(tensors: list[Tensor]) -> None:
    """Replace every tensor by its mean over the ranks, in place (one collective)."""
    _flat_reduce(tensors, average=True)


def sum_(tensors: list[Tensor]) -> None:
    """Replace every tensor by its sum over the ranks, in place (one collective)."""
    _flat_reduce(tensors, average=False)


def all_gather_rows(*tensors: Tensor) -> tuple[list[Tensor], slice]:
    """Gather tensors whose first dimension is this rank's batch (equal lengths among
    them, possibly different across ranks) and concatenate them in rank order.

    Returns the gathered tensors and the slice of the result that is this rank's own.
    """
    size, rank = world()
    n = tensors[0].shape[0]
    if size == 1:
        return list(tensors), slice(0, n)
    device = tensors[0].device
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(size)]
    torch.distributed.all_gather(sizes, torch.tensor([n], device=device))
    counts = [int(c) for c in sizes]
    longest = max(counts)
    out = []
    for t in tensors:
        padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[:n] = t
        parts = [torch.empty_like(padded) for _ in range(size)]
        torch.distributed.all_gather(parts, padded.contiguous())
        out.append(torch.cat([p[:c] for p, c in zip(parts, counts)]))
    start = sum(counts[:rank])
    return out, slice(start, start + n)


def sum_weight_grads(weights: InstanceWeights, idx: Tensor, dense: bool) -> Tensor:
    """Make every rank's weight gradients the sum over all ranks' rows (row parameters by
    gathering (index, row); other parameters by an all-reduce); return the rows the weight
    optimiser steps: the global batch's. Outside torch.distributed, `idx` unchanged."""
    if world()[0] == 1:
        return idx
    rows = torch.unique(idx)
    params = dict(weights.named_parameters())
    row_names = [n for n in weights.row_parameters if n in params
                 and params[n].grad is not None and not dense]
    gathered, _ = all_gather_rows(rows, *[cast(Tensor, params[n].grad)[rows] for n in row_names])
    for name, values in zip(row_names, gathered[1:]):
        grad = torch.zeros_like(params[name])
        grad.index_add_(0, gathered[0], values)
        params[name].grad = grad
    sum_([p.grad for n, p in params.items() if n not in row_names and p.grad is not None])
    return gathered[0]


def assert_identical(module: nn.Module, what: str) -> None:
    """Under torch.distributed, raise unless `module`'s floating-point state is the same on
    every rank (a checksum of sums and absolute sums, gathered)."""
    size = world()[0]
    if size == 1:
        return
    total = torch.zeros(2, dtype=torch.float64)
    for t in module.state_dict().values():
        if t.is_floating_point():
            total[0] += t.detach().double().sum().cpu()
            total[1] += t.detach().double().abs().sum().cpu()
    sums = [torch.zeros(2, dtype=torch.float64) for _ in range(size)]
    torch.distributed.all_gather(sums, total)
    if any(not torch.equal(s, sums[0]) for s in sums):
        raise RuntimeError(f"{what} differ between processes (checksums "
                           f"{[s.tolist() for s in sums]}): a bug, please report it")
