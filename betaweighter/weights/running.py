"""Per-instance running averages, bias-corrected: the state of the per-step rules that
remember what they saw (L2RW's weights given, the loss heuristics' scores)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["running_average", "update_running_average"]


@torch.no_grad()
def update_running_average(average: Tensor, visits: Tensor, rows: Tensor, values: Tensor,
                           decay: float) -> None:
    """``average[i] = decay * average[i] + (1 - decay) * value`` and one more visit, for each
    instance i of `rows` (an instance listed twice gets two visits, in order)."""
    values = values.to(average)
    if rows.unique().numel() == rows.numel():
        average[rows] = decay * average[rows] + (1 - decay) * values
        visits[rows] += 1
        return
    for i, v in zip(rows.tolist(), values.tolist()):
        average[i] = decay * average[i] + (1 - decay) * v
        visits[i] += 1


@torch.no_grad()
def running_average(average: Tensor, visits: Tensor, rows: Tensor | slice, decay: float,
                    unseen: float = float("nan")) -> Tensor:
    """The bias-corrected averages of `rows` (as Adam corrects its moments): the first
    visit reads that visit's value. Instances never visited read `unseen`."""
    avg, n = average[rows], visits[rows]
    correction = (1.0 - decay ** n.to(avg.dtype)).clamp_min(torch.finfo(avg.dtype).tiny)
    return torch.where(n > 0, avg / correction, torch.full_like(avg, unseen))
