"""Rows of every process, for the losses that need the global batch under torch.distributed.

Some self-supervised losses couple the rows of a batch: SimCLR's negatives are the other
rows, MoCo's queue takes the batch's keys, SwAV's Sinkhorn-Knopp spreads the batch over
the prototypes. Under DistributedDataParallel each process holds only its shard, so without
a gather the loss would change with the number of processes. `gather_rows` concatenates
the shards in rank order and stays differentiable in both modes that betaweighter uses:

* reverse mode (the training backward): the gradient reaching the gathered rows is summed
  over the processes (one all-reduce) and each process keeps the part for its own rows.
  With DDP averaging the parameter gradients over P processes, the gradient is then that of
  the mean loss over the global batch, as in one process on the concatenated batch;
* forward mode (the meta-gradient's tangent pass, dual tensors): the tangents are gathered
  as the values are, so a row's directional derivative includes the change of the other
  processes' rows. Every process runs that pass at the same step with the same tangent
  (the meta direction is averaged), so the collectives line up.

Outside torch.distributed, or with one process, it returns its input itself: single-process
losses are bitwise what they were. Shards may differ in length (the last batch of an
epoch): they are padded to the longest for the collective and trimmed after. A double
backward through the gather is refused (``once_differentiable``); betaweighter's double
backward is single-process anyway.

The same role as lightly's ``gather_distributed`` (its ``GatherLayer``) and the gathers of
SwAV's and MoCo's reference code.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from betaweighter.runtime import world

__all__ = ["gather_rows"]


def gather_rows(x: Tensor) -> tuple[Tensor, slice]:
    """Every process's rows of `x` (first dimension: this process's batch), concatenated
    in rank order, and the slice of the result that holds this process's own rows.

    Differentiable (reverse and forward mode). Outside torch.distributed or with one
    process: ``(x, slice(0, len(x)))``, `x` itself.
    """
    size, rank = world()
    n = int(x.shape[0])
    if size == 1:
        return x, slice(0, n)
    counts = _counts(n, x.device, size)
    start = sum(counts[:rank])
    return _Gather.apply(x, counts, start), slice(start, start + n)


def _counts(n: int, device: torch.device, size: int) -> tuple[int, ...]:
    mine = torch.tensor([n], dtype=torch.long, device=device)
    parts = [torch.zeros_like(mine) for _ in range(size)]
    torch.distributed.all_gather(parts, mine)
    return tuple(int(p) for p in parts)


def _all_gather(x: Tensor, counts: tuple[int, ...]) -> Tensor:
    longest = max(counts)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, counts: tuple[int, ...], start: int) -> Tensor:
        ctx.counts, ctx.start, ctx.n = counts, start, x.shape[0]
        return _all_gather(x.detach(), counts)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        total = grad.contiguous().clone()
        torch.distributed.all_reduce(total)  # every process's loss reads every row
        return total[ctx.start:ctx.start + ctx.n], None, None

    @staticmethod
    def jvp(ctx, x_tangent: Tensor, *_: None) -> Tensor:
        return _all_gather(x_tangent.contiguous(), ctx.counts)
