"""The interface every weighting method implements.

`MetaWeighter`, the pruning scheduler and the plots only talk to this interface, so a
method can be swapped by changing one object (or one config key).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class InstanceWeights(nn.Module):
    """Abstract weights for a pool of `num_instances` unlabelled instances.

    Subclasses set the class attributes:

    * ``learnable``: whether `MetaWeighter` runs the bilevel update for it;
    * ``two_pass``: whether `reweight` replaces the sampled weights for the real step
      (so the training graph must be kept for a second backward);
    * ``row_parameters``: names of parameters whose first dimension indexes instances,
      so an optimiser step may touch only the rows of the current batch.
    """

    learnable: bool = True
    two_pass: bool = False
    row_parameters: tuple[str, ...] = ()

    def __init__(self, num_instances: int) -> None:
        super().__init__()
        if int(num_instances) <= 0:
            raise ValueError(f"num_instances must be a positive integer, got {num_instances!r}")
        self.num_instances = int(num_instances)

    # -- what a training step uses -------------------------------------------------------
    def sample(self, indices: Tensor, losses: Tensor | None = None) -> Tensor:
        """Weights for the instances `indices` (shape (B,)), differentiable if learnable.

        `losses` holds each instance's detached pretext loss, for methods that use it.
        """
        raise NotImplementedError

    def regulariser(self, indices: Tensor) -> Tensor:
        """A term added to the meta objective for the batch (zero unless a method has one)."""
        return torch.zeros((), device=self.device)

    def reweight(self, weights: Tensor, meta_grad: Tensor) -> Tensor | None:
        """Weights for the real step computed from the meta-gradient, or None to keep the
        sampled ones (the single-pass BDW update). Two-pass methods such as L2RW override it."""
        return None

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp parameters back into their valid range after an optimiser step."""

    def on_epoch_end(self, epoch: int | None = None, model: nn.Module | None = None) -> bool:
        """Called by the trainer after each epoch (e.g. to refresh distances); returns
        whether anything changed. Nothing to do by default."""
        return False

    # -- what pruning, logging and plots use --------------------------------------------
    def mean(self, indices: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def std(self, indices: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def cdf(self, value: float, indices: Tensor | None = None) -> Tensor:
        """P(w_i <= value). Deterministic weights are point masses: 1 if w_i <= value."""
        w = self.mean(indices)
        return (w <= value).to(w.dtype)

    # -- helpers -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def _rows(self, indices: Tensor | None) -> Tensor | slice:
        """Validate `indices` (or select all rows when None)."""
        if indices is None:
            return slice(None)
        indices = torch.as_tensor(indices, device=self.device)
        if indices.dim() != 1 or indices.dtype not in (torch.int64, torch.int32, torch.int16,
                                                       torch.int8, torch.uint8):
            raise ValueError(
                f"indices must be a 1-D integer tensor, got shape {tuple(indices.shape)} "
                f"and dtype {indices.dtype}"
            )
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_instances):
            raise IndexError(
                f"indices must lie in [0, {self.num_instances}); got values from "
                f"{int(indices.min())} to {int(indices.max())}. Are the indices from a "
                "dataset of another size?"
            )
        return indices.long()
