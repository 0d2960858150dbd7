"""What `MetaWeighter.backward` checks about the user's batch, model output and loss, each
with one clear message (before the user's loss runs on a wrongly shaped output)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from betaweighter.errors import LossShapeError

__all__ = ["batch_size", "check_losses", "check_output", "copies_per_instance", "device_of"]

def device_of(x: Any) -> torch.device:
    first = x if isinstance(x, Tensor) else next(t for t in tensors(x))
    return first.device


def tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from tensors(o)


def batch_size(x: Any) -> int:
    if isinstance(x, Tensor):
        if x.dim() == 0:
            raise ValueError("x must be a batch with a leading batch dimension, got a scalar")
        return x.shape[0]
    first = next(tensors(x), None) if isinstance(x, (list, tuple, dict)) else None
    if first is None or first.dim() == 0:
        raise TypeError(f"x must be a tensor (or a tuple or dict of tensors with a batch "
                        f"dimension), got {type(x).__name__}")
    return first.shape[0]


def copies_per_instance(copies: int | str, n_rows: int, n_inst: int) -> int:
    if n_inst == 0:
        raise ValueError("indices is empty: nothing to train on")
    if copies == "infer":
        if n_rows % n_inst:
            raise LossShapeError(
                f"x has {n_rows} rows but indices has {n_inst} entries: x must hold the same "
                "number of consecutive copies of each indexed instance (e.g. 4 rotations, "
                "see bw.rotate4, or 2 views, see bw.pretext.interleave), so its length must "
                "be a multiple of len(indices)")
        return n_rows // n_inst
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be a positive integer or 'infer', got {copies!r}")
    if n_rows != copies * n_inst:
        raise LossShapeError(
            f"x has {n_rows} rows but {n_inst} indices x {copies} copies = "
            f"{n_inst * copies} were expected: pass one index per instance and `copies` "
            "consecutive rows for each (two views go in as rows 2i and 2i + 1: "
            "bw.pretext.interleave(view_a, view_b), not torch.cat)")
    return copies


def check_output(out: Any, n_rows: int) -> None:
    """The model must return one output row per input row (checked before the loss runs)."""
    for t in tensors(out):
        if t.dim() >= 1 and t.shape[0] != n_rows:
            raise ValueError(f"the model returned an output of shape {tuple(t.shape)} for a "
                             f"batch of {n_rows} inputs: its first dimension must be the "
                             "batch (one output per input row)")
    if isinstance(out, Tensor) and out.dim() == 0:
        raise ValueError(f"the model returned a scalar for a batch of {n_rows} inputs: it "
                         "must return one output per input row")


def check_losses(losses: Any, n_rows: int) -> Tensor:
    if not isinstance(losses, Tensor):
        raise TypeError(f"per_sample_loss must return a tensor, got {type(losses).__name__}")
    if losses.dim() == 0:
        raise LossShapeError(
            "per_sample_loss returned a scalar: it must return one loss per row of x, e.g. "
            "F.cross_entropy(out, y, reduction='none'). A library loss that averages over "
            "the batch (lightly's NTXentLoss, NegativeCosineSimilarity, ...) cannot be "
            "weighted per instance: use its per-sample form (bw.pretext.nt_xent_loss, "
            "info_nce_loss, byol_loss, simsiam_loss)")
    if losses.shape != (n_rows,):
        raise LossShapeError(
            f"per_sample_loss returned shape {tuple(losses.shape)}; expected ({n_rows},), "
            "one loss per input row (use reduction='none' and flatten any extra "
            "dimensions; with two views, one loss per view, rows 2i and 2i + 1)")
    return losses
