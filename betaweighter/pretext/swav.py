"""SwAV: the swapped prediction of cluster assignments, one loss per view, and its pretext.

Caron, Misra, Mairal, Goyal, Bojanowski and Joulin, "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments", NeurIPS 2020, arXiv:2006.09882. Two views of
every image go through the backbone and a projection head; with z the L2-normalised
projections and c_1..c_K L2-normalised prototypes (a bias-free linear layer), the scores
are s_rk = z_r . c_k. Sinkhorn-Knopp (`sinkhorn`) turns each view's scores over the batch
into codes q under an equal-partition constraint, and each view predicts the *other*
view's code:

    l_r = -sum_k q_p(r),k log softmax(s_r / tau)_k,    p(r) the other view of r's image,

SwAV's loss being the mean over rows (its two terms per image averaged). Row r is view r's
prediction, so an instance's two rows sum to its share of the loss; rows 2i and 2i + 1
are the two views of image i (``copies = 2``).

The codes are a constant of the step, and the weights do not flow through them. Sinkhorn
couples all the rows of a batch (as NT-Xent's denominator does): the code of row r
depends on every row's scores. SwAV computes the codes without gradient, and so does this
module: `SwappedPrediction` runs Sinkhorn once per batch, on the detached scores of the
first call of its loss (the training forward, at the current parameters, before the
step), and every later call of the same batch's loss reuses them (the meta-gradient's
forward-mode or finite-difference pass, further unrolled steps). The loss as defined is
therefore l_r(theta; q) with q fixed, exactly as a target network's output is fixed for
BYOL: the weighted loss sum_r w_r l_r / n is linear in the weights, the meta-gradient
dM/dw_r = -(lr / n) (J v) . grad l_r holds as it is (grad l_r with q held constant), and
every way of taking it differentiates the same function. A weight never changes any code:
an instance with a small weight still takes its share of the equal partition. Pruning
differs: a pruned image leaves the batch, and with it the partition.

Not reproduced: multi-crop (two views only), freezing the prototypes during the first
epoch, and starting the queue at a later epoch (here it is used from the step it is full).
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
from betaweighter.pretext.sinkhorn import sinkhorn
from betaweighter.pretext.twoview import TwoViewPretext, feature_dim
from betaweighter.pretext.views import swap_views

__all__ = ["SwAVPretext", "SwappedPrediction", "swav_loss"]


def swav_loss(scores: Tensor, codes: Tensor, temperature: float = 0.1) -> Tensor:
    """The swapped prediction per row (shape (n,)): cross-entropy of row r's softmax over
    the prototypes (``scores / temperature``) against the code of the other view of its
    image (rows 2i and 2i + 1 are the views of image i). `codes` are constants."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if scores.dim() != 2 or scores.shape != codes.shape or scores.shape[0] % 2:
        raise LossShapeError(f"the swapped prediction needs scores and codes of one shape "
                             f"(n, K), n even (two interleaved views per image), got "
                             f"{tuple(scores.shape)} and {tuple(codes.shape)}")
    log_p = F.log_softmax(scores / temperature, dim=1)
    return -(swap_views(codes.detach()).to(log_p.dtype) * log_p).sum(1)


class SwappedPrediction:
    """SwAV's per-row loss for one batch: ``loss(out)`` with `out` the scores (n, K) or a
    model's ``(projections, scores)``.

    The codes are computed on the first call, from that call's scores without gradient,
    and kept for the later calls (see the module docstring): build one per batch. Each
    view's codes come from a Sinkhorn-Knopp over that view's rows of the batch, after
    `queue_scores[v]` (the queue's embeddings against the current prototypes, (2, Q, K)),
    when given. With `gather_distributed`, under torch.distributed with several
    processes, Sinkhorn runs over the global batch (every process's rows, in rank order)
    and each process keeps its rows' codes, as SwAV's distributed Sinkhorn does. The
    first call's projections, gathered in the same way, are kept in `embeddings` for a
    queue."""

    def __init__(self, temperature: float = 0.1, epsilon: float = 0.05, iterations: int = 3,
                 *, queue_scores: Tensor | None = None,
                 gather_distributed: bool = False) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if queue_scores is not None and (queue_scores.dim() != 3 or queue_scores.shape[0] != 2):
            raise LossShapeError(f"queue_scores must be (2, Q, K), one queue per view, got "
                                 f"{tuple(queue_scores.shape)}")
        self.temperature, self.epsilon, self.iterations = float(temperature), epsilon, iterations
        self.queue_scores = queue_scores
        self.gather_distributed = bool(gather_distributed)
        self.codes: Tensor | None = None
        self.embeddings: Tensor | None = None

    def __call__(self, out: Any) -> Tensor:
        z, scores = out if isinstance(out, (tuple, list)) else (None, out)
        if self.codes is None:
            self.codes = self.assign(scores, z)
        return swav_loss(scores, self.codes, self.temperature)

    @torch.no_grad()
    def assign(self, scores: Tensor, z: Tensor | None = None) -> Tensor:
        """The codes of this process's rows (n, K), from detached `scores`; also keeps the
        (gathered) projections `z` in `embeddings`."""
        if scores.dim() != 2 or scores.shape[0] % 2:
            raise LossShapeError(f"SwAV expects scores (n, K) with n even (two interleaved "
                                 f"views per image), got shape {tuple(scores.shape)}")
        dtype = torch.promote_types(scores.dtype, torch.float32)
        k = scores.shape[1]
        packed = scores.detach().to(dtype)
        if z is not None:
            packed = torch.cat([packed, z.detach().to(dtype)], dim=1)
        if self.gather_distributed:
            packed, own = gather_rows(packed)
        else:
            own = slice(0, packed.shape[0])
        if z is not None:
            self.embeddings = packed[:, k:]
        everyone = packed[:, :k]
        codes = torch.empty_like(everyone)
        for view in (0, 1):
            rows = everyone[view::2]
            s = rows if self.queue_scores is None else torch.cat(
                [self.queue_scores[view].to(dtype), rows])
            codes[view::2] = sinkhorn(s, self.epsilon, self.iterations)[-rows.shape[0]:]
        return codes[own]


@register_pretext("swav")
class SwAVPretext(TwoViewPretext):
    """SwAV with two views: a projection head (Linear-BN-ReLU-Linear, `hidden_dim` ->
    `projection_dim`), L2-normalised projections, `prototypes` L2-normalised prototypes
    (re-normalised in `after_step`, after every ``optimizer.step()``), Sinkhorn-Knopp codes
    (`epsilon`, `sinkhorn_iterations`) and the swapped prediction at `temperature`.

    ``forward(x)`` returns ``(projections, scores)``; ``batch(x)`` augments pool images into
    interleaved views and returns a `SwappedPrediction` as the per-row loss. `queue_size`
    > 0 keeps that many recent projections per view (of the global batch under
    torch.distributed; a buffer, saved in checkpoints) and adds them to Sinkhorn's batch
    once the queue is full, as SwAV does for small batches. `gather_distributed`: under
    torch.distributed, Sinkhorn and the queue take every process's rows. See
    `TwoViewPretext` for `image_size`, `mean`, `std` and `augment`.
    """

    queue: Tensor  # buffers only when queue_size > 0
    queue_filled: Tensor

    def __init__(self, backbone: nn.Module, *, prototypes: int = 300, temperature: float = 0.1,
                 epsilon: float = 0.05, sinkhorn_iterations: int = 3,
                 projection_dim: int = 128, hidden_dim: int = 512, queue_size: int = 0,
                 gather_distributed: bool = True, image_size: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 augment: dict[str, Any] | None = None) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        for name, value, least in (("prototypes", prototypes, 1),
                                   ("sinkhorn_iterations", sinkhorn_iterations, 1),
                                   ("queue_size", queue_size, 0)):
            if isinstance(value, bool) or int(value) != value or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        super().__init__(backbone, image_size=image_size, mean=mean, std=std, augment=augment)
        self.temperature, self.epsilon = float(temperature), float(epsilon)
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.gather_distributed = bool(gather_distributed)
        self.projector = mlp_head(feature_dim(backbone), hidden_dim, projection_dim)
        self.prototypes = nn.Linear(int(projection_dim), int(prototypes), bias=False)
        self.normalise_prototypes()
        self.queue_size = int(queue_size)
        if self.queue_size:
            self.register_buffer("queue", torch.zeros(2, self.queue_size, int(projection_dim)))
            self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self._pending: SwappedPrediction | None = None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = F.normalize(self.projector(self.backbone.features(x)), dim=1)  # type: ignore[operator]  # Module.__getattr__
        return z, self.prototypes(z)

    def batch(self, x: Tensor) -> PretextBatch:
        inputs = self.views(x)
        queue_scores = None
        if self.queue_size and int(self.queue_filled) == self.queue_size:
            with torch.no_grad():  # the queue against the prototypes of this step
                queue_scores = self.queue @ self.prototypes.weight.detach().t().to(self.queue)
        loss = SwappedPrediction(self.temperature, self.epsilon, self.sinkhorn_iterations,
                                 queue_scores=queue_scores,
                                 gather_distributed=self.gather_distributed)
        self._pending = loss
        return PretextBatch(inputs, loss, self.copies)

    @torch.no_grad()
    def normalise_prototypes(self) -> None:
        """Project every prototype back onto the unit sphere."""
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    @torch.no_grad()
    def after_step(self) -> None:
        """Normalise the prototypes; the last batch's projections join the queue."""
        self.normalise_prototypes()
        pending, self._pending = self._pending, None
        if self.queue_size and pending is not None and pending.embeddings is not None:
            self.enqueue(pending.embeddings)

    @torch.no_grad()
    def enqueue(self, z: Tensor) -> None:
        """Put interleaved projections `z` (2m, d) at the front of the two view queues,
        dropping the oldest."""
        for view in (0, 1):
            new = z[view::2].to(self.queue)
            self.queue[view] = torch.cat([new, self.queue[view]])[:self.queue_size]
        self.queue_filled.fill_(min(self.queue_size, int(self.queue_filled) + z.shape[0] // 2))
