"""What the two-view pretexts (SimCLR, MoCo, BYOL, SimSiam, SwAV) share: two augmented views per
pool image as consecutive rows, projection heads on the backbone's features, and an unused
rotation head left frozen.

Every instance contributes two rows, one per view (``copies = 2``), and each row's loss is
that view's own term of the method's symmetric loss, so an instance's weight multiplies the
sum of its two terms. The backbone keeps its (4-way) head so that checkpoints rebuild with
`models.load_backbone`; these tasks never use it, so it is frozen (no gradient, untouched
by the optimiser, ignored by DistributedDataParallel).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from betaweighter.errors import LossShapeError
from betaweighter.pretext.base import Pretext
from betaweighter.pretext.views import augment_pairs, simclr_view, two_view_pipelines

__all__ = ["Encoder", "TwoViewPretext", "feature_dim"]


def feature_dim(backbone: nn.Module) -> int:
    """The size of ``backbone.features(x)`` (a `models.Backbone` records it)."""
    dim = getattr(backbone, "feature_dim", None)
    if dim is None:
        raise TypeError(f"{type(backbone).__name__} has no `feature_dim`: use a "
                        "betaweighter.models backbone or set backbone.feature_dim")
    return int(dim)


class Encoder(nn.Module):
    """``head(backbone.features(x))``: the online (or target) encoder of a two-view task."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone.features(x))  # type: ignore[operator]  # Module.__getattr__


class TwoViewPretext(Pretext):
    """Base class: holds the backbone and the view pipelines.

    Args:
        backbone: a network with ``features(x)`` and ``feature_dim``.
        image_size, mean, std: the pool's image side and normalisation; the trainer sets
            them from the data (`bind_data`). Without them `batch` accepts only batches
            that already hold two views, (B, 2, C, H, W), e.g. from `views.ViewPool`.
        augment: keyword arguments of `views.simclr_view` (``min_scale``,
            ``jitter_strength``, ``blur_prob``, ...).
    """

    copies = 2
    recipe = "simclr"

    def __init__(self, backbone: nn.Module, *, image_size: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 augment: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        head = getattr(backbone, "head", None)
        if isinstance(head, nn.Module):
            head.requires_grad_(False)
        self.augment = dict(augment or {})
        _check_augment(self.augment)
        self._views: tuple[Any, Any] | None = None
        if image_size is not None or mean is not None or std is not None:
            if image_size is None or mean is None or std is None:
                raise ValueError("give image_size, mean and std together (or none of them, "
                                 "and call bind_data later)")
            self._build_views(image_size, mean, std)

    def bind_data(self, bundle: Any) -> None:
        """Build the view pipelines for the bundle's image side and normalisation."""
        self._build_views(bundle.image_size, bundle.mean, bundle.std)

    def _build_views(self, image_size: int, mean: Sequence[float],
                     std: Sequence[float]) -> None:
        self._views = two_view_pipelines(self.recipe, image_size, mean, std, **self.augment)

    def views(self, x: Tensor) -> Tensor:
        """Rows 2i and 2i + 1: the two views of image i. `x` is a batch of pool images
        (B, C, H, W), augmented here, or a batch of view pairs (B, 2, C, H, W)."""
        if x.dim() == 5:
            if x.shape[1] != 2:
                raise LossShapeError(f"a batch of view pairs must have shape (B, 2, C, H, W), "
                                     f"got {tuple(x.shape)}")
            return x.flatten(0, 1)
        if self._views is None:
            raise RuntimeError(f"{type(self).__name__} has no augmentation pipelines: pass "
                               "image_size, mean and std (or call bind_data with a "
                               "DataBundle), or feed view pairs (B, 2, C, H, W) from "
                               "bw.pretext.ViewPool")
        return augment_pairs(x, *self._views)


def _check_augment(options: dict[str, Any]) -> None:
    allowed = [n for n, p in inspect.signature(simclr_view).parameters.items()
               if p.kind == p.KEYWORD_ONLY and n != "normalised_input"]
    for name in options:
        if name not in allowed:
            raise TypeError(f"unknown augmentation option {name!r}; allowed: "
                            + ", ".join(allowed))
