"""MoCo's contrastive loss (InfoNCE against a queue of keys) per view, and the MoCo pretext.

He, Fan, Wu, Xie and Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020, with the MLP head and augmentation of MoCo v2 (Chen, Fan, Girshick and
He, arXiv:2003.04297). A query q (online encoder) is matched against the key k+ of the
other view of its image, computed by a momentum encoder, and against K negative keys kept
in a queue from earlier batches; with everything L2-normalised and a temperature tau,

    l(q) = -log( exp(q . k+ / tau) / (exp(q . k+ / tau) + sum_j exp(q . queue_j / tau)) ).

Both views serve as queries (the symmetrised loss of MoCo v3), so every instance has two
rows, each with its own loss.

What "per-sample" means here. Row r's loss is the InfoNCE term of query r. Its negatives
are the queue: keys of *earlier* batches, constants during this step, so l_r depends on
the batch only through its own positive key and (in train mode) BatchNorm's batch
statistics. The weighted loss sum_r w_r l_r / n is linear in the weights, whose gradient
paths never reach the momentum encoder or the queue; an instance's keys join the queue as
negatives whatever its weight. The keys are computed in `batch` under ``no_grad`` and
closed over by the loss, so the meta-gradient's second pass and the look-ahead see the
same keys and never run the momentum encoder. `after_step` (after ``optimizer.step()``)
moves the momentum encoder and enqueues the batch's keys (one per image, from the first
view).

Several processes. Under torch.distributed, with ``gather_distributed`` (the default), the
keys that join the queue are every process's (gathered in rank order, as MoCo's reference
code does), so every process holds the same queue, the one a single process would hold
after the concatenated batch.

MoCo's shuffled BatchNorm (a multi-GPU trick against information leaking through batch
statistics) is not reproduced: the key encoder's BatchNorm sees the whole key batch (under
torch.distributed, the process's shard).
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
from betaweighter.pretext.momentum import MomentumTarget
from betaweighter.pretext.twoview import Encoder, TwoViewPretext, feature_dim
from betaweighter.pretext.views import swap_views

__all__ = ["MoCoPretext", "info_nce_loss"]


def info_nce_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """InfoNCE per query (shape (n,)): query ``q[r]`` against its positive key ``k[r]``
    and the negatives ``queue`` (K, d). All three are L2-normalised here."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if q.dim() != 2 or q.shape != k.shape or queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise LossShapeError(f"InfoNCE needs queries (n, d), positive keys (n, d) and a "
                             f"queue (K, d); got {tuple(q.shape)}, {tuple(k.shape)} and "
                             f"{tuple(queue.shape)}")
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    negatives = F.normalize(queue, dim=1).to(q.dtype)
    positive = (q * k.to(q.dtype)).sum(1, keepdim=True)
    logits = torch.cat([positive, q @ negatives.t()], dim=1) / temperature
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target, reduction="none")


@register_pretext("moco")
class MoCoPretext(TwoViewPretext):
    """MoCo v2 with a symmetrised loss: online encoder = backbone + MLP head (Linear-ReLU-
    Linear, `hidden_dim` -> `projection_dim`), key encoder = its momentum copy (`momentum`),
    `queue_size` negative keys (a buffer, saved in checkpoints). `gather_distributed`:
    under torch.distributed, every process's keys join the queue.

    See `TwoViewPretext` for `image_size`, `mean`, `std` and `augment`.
    """

    queue: Tensor
    queue_ptr: Tensor

    def __init__(self, backbone: nn.Module, *, temperature: float = 0.2,
                 projection_dim: int = 128, hidden_dim: int = 512, queue_size: int = 4096,
                 momentum: float = 0.99, gather_distributed: bool = True,
                 image_size: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 augment: dict[str, Any] | None = None) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if isinstance(queue_size, bool) or int(queue_size) != queue_size or queue_size < 1:
            raise ValueError(f"queue_size must be a positive integer, got {queue_size!r}")
        super().__init__(backbone, image_size=image_size, mean=mean, std=std, augment=augment)
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)
        self.projector = mlp_head(feature_dim(backbone), hidden_dim, projection_dim,
                                  batch_norm=False)
        self.target = MomentumTarget(self.online(), momentum)
        self.register_buffer("queue", F.normalize(torch.randn(int(queue_size),
                                                              int(projection_dim)), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending: Tensor | None = None

    def online(self) -> Encoder:
        """The online encoder (backbone + projector), a view of this module's layers."""
        return Encoder(self.backbone, self.projector)

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone.features(x))  # type: ignore[operator]  # Module.__getattr__

    def batch(self, x: Tensor) -> PretextBatch:
        inputs = self.views(x)
        keys = F.normalize(self.target(inputs), dim=1)
        positives = swap_views(keys)
        queue = self.queue.clone()  # this step's negatives, fixed before the keys join
        temperature = self.temperature
        first = keys[0::2].detach()
        self._pending = gather_rows(first)[0] if self.gather_distributed else first

        def loss(q: Tensor) -> Tensor:
            return info_nce_loss(q, positives, queue, temperature)

        return PretextBatch(inputs, loss, self.copies)

    @torch.no_grad()
    def after_step(self) -> None:
        """Momentum update of the key encoder, then the last batch's keys join the queue."""
        self.target.update(self.online())
        if self._pending is not None:
            self.enqueue(self._pending)
            self._pending = None

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write `keys` (m, d) over the oldest entries of the queue."""
        size = self.queue.shape[0]
        keys = keys[-size:].to(self.queue.dtype)
        where = (int(self.queue_ptr) + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[where.to(self.queue.device)] = keys.to(self.queue.device)
        self.queue_ptr.fill_((int(self.queue_ptr) + keys.shape[0]) % size)
