"""Self-distillation: BYOL (EMA target) and SimSiam (stop-gradient target), per view.

BYOL: Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning", NeurIPS 2020. SimSiam: Chen and He, "Exploring Simple Siamese Representation
Learning", CVPR 2021. An online network (backbone, projector, predictor) predicts, from one
view, a target projection of the other view; the loss is a negative cosine similarity:

    BYOL:    l_r = 2 - 2 cos(p_r, z'_p(r)),   z' from the EMA target network;
    SimSiam: l_r = -cos(p_r, sg(z_p(r))),     z from the online network, gradient stopped;

where p(r) is the other view of row r's image. Both papers symmetrise the loss over the two
views; here each view's term is its own row, so an instance's two rows sum to the
symmetrised loss. Nothing couples rows except BatchNorm's batch statistics (as in the
rotation task): the weighted loss sum_r w_r l_r / n is linear in the weights.

The target side is constant within a step: `batch` computes it once, under ``no_grad``
(BYOL: the EMA network, `MomentumTarget`; SimSiam: the online backbone and projector, with
BatchNorm's running statistics left alone), and the loss closes over it. So every way of
taking the meta-gradient differentiates the function whose gradient the real step uses.
A stop-gradient *inside* the loss (``z.detach()`` of the same forward) would be right for
the backward and forward-mode passes, which honour it, but a finite difference
(``meta_gradient="finite_difference"``) differentiates values and would see through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from betaweighter.errors import LossShapeError
from betaweighter.pretext.base import PretextBatch, register_pretext
from betaweighter.pretext.heads import mlp_head
from betaweighter.pretext.momentum import MomentumTarget
from betaweighter.pretext.twoview import Encoder, TwoViewPretext, feature_dim
from betaweighter.pretext.views import swap_views

__all__ = ["BYOLPretext", "SimSiamPretext", "byol_loss", "negative_cosine", "simsiam_loss"]


def negative_cosine(a: Tensor, b: Tensor) -> Tensor:
    """-cos(a_r, b_r) per row (shape (n,))."""
    if a.dim() != 2 or a.shape != b.shape:
        raise LossShapeError(f"expected two (n, d) tensors of the same shape, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
    return -F.cosine_similarity(a, b.to(a.dtype), dim=1)


def byol_loss(p: Tensor, z_target: Tensor) -> Tensor:
    """BYOL's loss per view: 2 - 2 cos(p_r, z_target of the other view). `p` are the
    online predictions and `z_target` the target projections of the same interleaved rows
    (views of image i at rows 2i and 2i + 1)."""
    return 2.0 + 2.0 * negative_cosine(p, swap_views(z_target))


def simsiam_loss(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's loss per view: -cos(p_r, stop-gradient of the other view's projection);
    `z` are the projections of the same interleaved rows."""
    return negative_cosine(p, swap_views(z).detach())


class _SelfDistillation(TwoViewPretext):
    def __init__(self, backbone: nn.Module, projector: nn.Module, predictor: nn.Module, *,
                 image_size: int | None, mean: Sequence[float] | None,
                 std: Sequence[float] | None, augment: dict[str, Any] | None) -> None:
        super().__init__(backbone, image_size=image_size, mean=mean, std=std, augment=augment)
        self.projector = projector
        self.predictor = predictor

    def online(self) -> Encoder:
        """The online encoder (backbone + projector), a view of this module's layers."""
        return Encoder(self.backbone, self.projector)


@register_pretext("byol")
class BYOLPretext(_SelfDistillation):
    """BYOL: projector and predictor MLPs (Linear-BN-ReLU-Linear, `hidden_dim` ->
    `projection_dim`), a target network trailing backbone + projector by EMA with
    `momentum` (updated in `after_step`), BYOL's asymmetric augmentation.

    ``forward(x)`` returns the predictions; see `TwoViewPretext` for `image_size`, `mean`,
    `std` and `augment`.
    """

    recipe = "byol"

    def __init__(self, backbone: nn.Module, *, projection_dim: int = 128,
                 hidden_dim: int = 512, momentum: float = 0.99, image_size: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 augment: dict[str, Any] | None = None) -> None:
        dim = feature_dim(backbone)
        super().__init__(backbone, mlp_head(dim, hidden_dim, projection_dim),
                         mlp_head(projection_dim, hidden_dim, projection_dim),
                         image_size=image_size, mean=mean, std=std, augment=augment)
        self.target = MomentumTarget(self.online(), momentum)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(self.projector(self.backbone.features(x)))  # type: ignore[operator]  # Module.__getattr__

    def batch(self, x: Tensor) -> PretextBatch:
        inputs = self.views(x)
        z_target = self.target(inputs)

        def loss(p: Tensor) -> Tensor:
            return byol_loss(p, z_target)

        return PretextBatch(inputs, loss, self.copies)

    def after_step(self) -> None:
        """The EMA step of the target network (after ``optimizer.step()``)."""
        self.target.update(self.online())


@register_pretext("simsiam")
class SimSiamPretext(_SelfDistillation):
    """SimSiam: a 3-layer projector (BN on every layer, output included) and a bottleneck
    predictor (`projection_dim` -> `predictor_hidden_dim` -> `projection_dim`); the target
    is the online projection with its gradient stopped, so there is no second network.

    ``forward(x)`` returns the predictions; see `TwoViewPretext` for `image_size`, `mean`,
    `std` and `augment`.
    """

    def __init__(self, backbone: nn.Module, *, projection_dim: int = 128,
                 hidden_dim: int = 512, predictor_hidden_dim: int = 32,
                 image_size: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None,
                 augment: dict[str, Any] | None = None) -> None:
        dim = feature_dim(backbone)
        super().__init__(backbone,
                         mlp_head(dim, hidden_dim, projection_dim, layers=3,
                                  last_batch_norm=True),
                         mlp_head(projection_dim, predictor_hidden_dim, projection_dim),
                         image_size=image_size, mean=mean, std=std, augment=augment)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(self.projector(self.backbone.features(x)))  # type: ignore[operator]  # Module.__getattr__

    def batch(self, x: Tensor) -> PretextBatch:
        inputs = self.views(x)
        with torch.no_grad():  # the stopped branch, at the current parameters; the real
            online = self.online()  # BatchNorm statistics are left to the training forward
            state = {**dict(online.named_parameters()),
                     **{n: b.clone() for n, b in online.named_buffers()}}
            z = functional_call(online, state, (inputs,))

        def loss(p: Tensor) -> Tensor:
            return simsiam_loss(p, z)

        return PretextBatch(inputs, loss, self.copies)
