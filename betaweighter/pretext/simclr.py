"""SimCLR's contrastive loss (NT-Xent) as one loss per view, and the SimCLR pretext.

Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020: two augmented views of every image go through the backbone
and a projection head; with z the L2-normalised projections and tau a temperature, the loss
of anchor row r with positive row p(r) (the other view of the same image) is

    l_r = -log( exp(z_r . z_p(r) / tau) / sum_{k != r} exp(z_r . z_k / tau) ),

and SimCLR minimises the mean over all 2B rows.

What "per-sample" means here. Row r's loss is the term in which view r is the *anchor*.
Its denominator holds every other row of the batch as a negative, so l_r depends on the
whole batch: l_r = l_r(theta; batch). The weighted training loss sum_r w_r l_r(theta) / n
is still linear in the weights: a weight multiplies an anchor's term and never enters any
l_r (instance i stays a negative for the others at full strength, whatever w_i). The
meta-gradient dM/dw_r = -(lr / n) (J v) . grad l_r therefore holds as it is, with grad l_r
the full gradient of row r's term, negatives included; `MetaWeighter` sums an instance's
two rows. Pruning differs from a zero weight: a pruned image leaves the batch, as an
anchor and as a negative.

Several processes. Under torch.distributed each process holds a shard of the batch; with
``gather_distributed`` (the pretext's default) the negatives are every process's rows
(`gather.gather_rows`, differentiable in both directions), so the per-row losses are those
of one process on the concatenated batch, whatever the number of processes. Anchors stay
local: each process computes its own rows' losses, and the gradient through the other
processes' rows flows back to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from betaweighter.errors import LossShapeError
from betaweighter.pretext.base import PretextBatch, register_pretext
from betaweighter.pretext.gather import gather_rows
from betaweighter.pretext.heads import mlp_head
from betaweighter.pretext.twoview import TwoViewPretext, feature_dim

__all__ = ["SimCLRPretext", "nt_xent_loss"]


def nt_xent_loss(z: Tensor, temperature: float = 0.5, copies: int = 2, *,
                 gather_distributed: bool = False) -> Tensor:
    """NT-Xent per row of `z` (shape (n,)): rows come in groups of `copies` consecutive
    views of one instance (rows 2i and 2i + 1 for two views).

    With more than two views, row r's loss averages -log p(k | r) over the other views k of
    its group (the multi-positive form of Khosla et al., NeurIPS 2020, L_out), which is
    NT-Xent for two views. The mean over rows equals SimCLR's loss (and lightly's
    ``NTXentLoss`` for two views). With `gather_distributed`, under torch.distributed with
    several processes, the candidates are every process's rows (this process's rows stay
    the anchors); otherwise, and in one process, only `z`'s."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if isinstance(copies, bool) or int(copies) != copies or copies < 2:
        raise LossShapeError(f"a contrastive loss needs at least 2 views per instance, got "
                             f"copies={copies!r}")
    if z.dim() != 2 or z.shape[0] % copies or z.shape[0] < 2 * copies:
        raise LossShapeError(
            f"NT-Xent expects projections (n, d) with n a multiple of the {copies} views per "
            f"instance and at least two instances, got shape {tuple(z.shape)}: the views of "
            "instance i must be rows copies*i .. copies*i + copies - 1 "
            "(bw.pretext.interleave)")
    z = F.normalize(z, dim=1)
    keys, own = gather_rows(z) if gather_distributed else (z, slice(0, z.shape[0]))
    sim = (z @ keys.t()) / temperature
    row = torch.arange(own.start, own.stop, device=z.device)  # the anchors' places in keys
    col = torch.arange(keys.shape[0], device=z.device)
    itself = row[:, None] == col[None, :]
    sim = sim.masked_fill(itself, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positive = (row[:, None] // copies == col[None, :] // copies) & ~itself
    return -log_prob.masked_fill(~positive, 0.0).sum(1) / (copies - 1)


@register_pretext("simclr")
class SimCLRPretext(TwoViewPretext):
    """SimCLR: NT-Xent over two views through a projection head
    (Linear-BN-ReLU-Linear, `hidden_dim` -> `projection_dim`).

    ``forward(x)`` is the projection of every row; ``batch(x)`` augments a batch of pool
    images into interleaved views and returns `nt_xent_loss` as the per-row loss. See
    `TwoViewPretext` for `image_size`, `mean`, `std` and `augment`. `gather_distributed`:
    under torch.distributed, every process's rows are the negatives (`nt_xent_loss`).
    """

    def __init__(self, backbone: nn.Module, *, temperature: float = 0.5,
                 projection_dim: int = 128, hidden_dim: int = 512,
                 gather_distributed: bool = True,
                 image_size: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None,
                 augment: dict[str, Any] | None = None) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        super().__init__(backbone, image_size=image_size, mean=mean, std=std, augment=augment)
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)
        self.projector = mlp_head(feature_dim(backbone), hidden_dim, projection_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone.features(x))  # type: ignore[operator]  # Module.__getattr__

    def loss(self, z: Tensor) -> Tensor:
        """The per-row loss of a batch of projections."""
        return nt_xent_loss(z, self.temperature, self.copies,
                            gather_distributed=self.gather_distributed)

    def batch(self, x: Tensor) -> PretextBatch:
        return PretextBatch(self.views(x), self.loss, self.copies)
