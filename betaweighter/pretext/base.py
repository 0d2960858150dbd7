"""The interface of a self-supervised task, as the trainer and `MetaWeighter` use it.

A `Pretext` is an `nn.Module` holding the trainable network: the backbone and the task's
heads. Its ``forward`` maps the task's inputs to what the per-sample loss reads, so it is
the model handed to `MetaWeighter` and to the optimiser. `batch` turns a batch of pool
images into a `PretextBatch`: the inputs, a per-row loss and the number of rows per
instance (``copies``: 4 rotations, 2 views, 1). Anything the task keeps outside the
gradient (a momentum encoder, a queue of negatives) is updated in `after_step`, which the
training loop calls after ``optimizer.step()``. `loss_parts` reports the pieces of a
composite loss for the metrics, and `checkpoint_entries` adds task-specific entries (a
detector initialisation) to the checkpoints a run writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from torch import Tensor, nn

from betaweighter.registry import Registry

__all__ = ["PRETEXTS", "Pretext", "PretextBatch", "register_pretext"]

#: Every pretext task by its ``pretext.name``. The factory builds a `TwoViewPretext` with its
#: view pipelines, RPN pre-training on a ResNet, and any other class as ``cls(backbone,
#: **pretext.options)``; ``models=(...)`` limits the ``model.name`` a task accepts.
PRETEXTS = Registry("pretext", "pretext.name", package="betaweighter.pretext",
                    decorator="register_pretext")
register_pretext = PRETEXTS.register


@dataclass
class PretextBatch:
    """One training batch of a pretext task: ``loss_fn(model(inputs))`` gives one loss per
    row of `inputs`, with `copies` consecutive rows per pool instance."""

    inputs: Any
    loss_fn: Callable[[Any], Tensor]
    copies: int


class Pretext(nn.Module):
    """Base class of the pretext tasks; subclasses set ``backbone`` and implement `batch`
    and `forward`."""

    backbone: nn.Module

    def batch(self, x: Tensor) -> PretextBatch:
        """The task's inputs and per-row loss for a batch `x` of pool images."""
        raise NotImplementedError

    def features(self, x: Tensor) -> Tensor:
        """The backbone's embedding (what meta objectives and evaluators use)."""
        return cast(Tensor, self.backbone.features(x))  # type: ignore[operator]

    def after_step(self) -> None:
        """Update what the task keeps outside the gradient (after ``optimizer.step()``)."""

    def bind_data(self, bundle: Any) -> None:
        """Learn what the task needs to know of the data it will see (a `DataBundle`: e.g.
        its normalisation, to look at pixels); called by the experiment factory."""

    def target_loss(self, x: Tensor, boxes: list[Tensor]) -> Tensor:
        """The per-image loss of images `x` against labelled `boxes` (xyxy pixels), which
        the detection meta objective asks of a look-ahead model; only a task that predicts
        boxes (rpn) has one."""
        raise NotImplementedError(f"{type(self).__name__} has no box loss")

    @property
    def has_target_loss(self) -> bool:
        """Whether this task overrides `target_loss` (the detection objective needs it)."""
        return type(self).target_loss is not Pretext.target_loss

    def loss_parts(self) -> dict[str, float]:
        """The components of the last batch's loss (name -> batch mean), for the metrics of
        a task whose loss is a sum (e.g. RPN objectness + box regression); empty if none."""
        return {}

    def checkpoint_entries(self) -> dict[str, Any]:
        """Extra top-level entries for the task's checkpoints (e.g. a detector
        initialisation); the keys must not clash with the trainer's own."""
        return {}
