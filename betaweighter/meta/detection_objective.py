"""A detection meta objective: the look-ahead model's box loss on labelled target images.

For weighted RPN pre-training the natural question to ask of a look-ahead step is "does
the region proposal network now find the objects of the target domain better?". This
objective answers it with the RPN loss (objectness + box regression, as in
`RPNPretext.target_loss`) of the look-ahead model on a seeded batch of a few labelled
target images, scored against their real boxes. The model must have a method
``target_loss(images, boxes) -> per-image losses`` (``RPNPretext`` has);
`PrototypicalLoss` on crops of the target objects is the alternative that needs no boxes
at meta time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from betaweighter.meta.objectives import ShuffledBatchObjective, register_objective
from betaweighter.pretext.base import Pretext

__all__ = ["DetectionLoss"]


@register_objective("detection", fields={"detection_batch": "batch_size"},
                    target="detection_target")
class DetectionLoss(ShuffledBatchObjective):
    """Mean of ``model.target_loss(images, boxes)`` over `batch_size` labelled images per
    call, walking through seeded shuffles of the target set.

    The target dataset yields ``(image (C, H, W), target)`` with ``target["boxes"]``
    (xyxy pixels), images of one size, normalised as the pool is (``DataBundle.
    detection_target`` of the shapes set is such a dataset).
    """

    def __init__(self, batch_size: int = 4, method: str = "target_loss", seed: int = 0) -> None:
        super().__init__(batch_size, seed)
        self.method = method

    def check_model(self, model: Any) -> None:
        """The model must score images against boxes with its `method`: a pretext with a
        box loss (`Pretext.has_target_loss`, e.g. rpn), or any model with that method."""
        has = (model.has_target_loss if isinstance(model, Pretext) and self.method ==
               "target_loss" else callable(getattr(model, self.method, None)))
        if not has:
            raise ValueError(f"the detection objective needs a model with a box loss "
                             f"{self.method}(images, boxes) (pretext rpn)")

    def __call__(self, model: Any) -> Tensor:
        self._check_bound()
        items = [self.dataset[int(i)] for i in self._next_indices()]
        shapes = {tuple(torch.as_tensor(it[0]).shape) for it in items}
        if len(shapes) != 1:
            raise ValueError(f"the detection target images must share one size to batch, got "
                             f"{sorted(shapes)}; resize them first")
        x = torch.stack([torch.as_tensor(it[0]) for it in items]).to(model.device)
        boxes = [torch.as_tensor(it[1]["boxes"], dtype=torch.float32) for it in items]
        return model.call(self.method, x, boxes).mean()

