"""Meta objectives: how a look-ahead model is judged on the labelled target data.

An objective is any callable ``objective(model) -> scalar tensor`` where `model` is the
look-ahead view (callable like the user's model, with ``.features``). The two classes
here draw their own seeded batches from a labelled target dataset given to `bind`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from betaweighter.data.episodes import EpisodeSampler
from betaweighter.data.labels import labels_of
from betaweighter.data.prefetch import Prefetcher, stack_items
from betaweighter.registry import Registry
from betaweighter.runtime import world

__all__ = ["OBJECTIVES", "ClassificationLoss", "MetaObjective", "PrototypicalLoss",
           "ShuffledBatchObjective", "register_objective"]

#: The meta objectives ``meta.objective`` chooses from (see `register_objective`).
OBJECTIVES = Registry("meta objective", "meta.objective", decorator="register_objective")


def register_objective(name: str, *, fields: dict[str, str] | None = None,
                       target: str = "target_train", **options: Any):  # noqa: ANN201
    """Register a `MetaObjective` class as ``meta.objective: <name>``. A config builds it
    as ``cls(**{arg: meta.<key> for key, arg in fields.items()}, **options, seed=seed)``
    and binds it to the `DataBundle` attribute `target` (``target_train``, or
    ``detection_target`` for images with boxes)."""
    return OBJECTIVES.register(name, fields=dict(fields or {}), target=target,
                               options=dict(options))

Features = Callable[[Any, Tensor], Tensor]


def _gather(dataset: Any, indices: np.ndarray, device: torch.device) -> tuple[Tensor, Tensor]:
    x, y = stack_items(dataset, indices)
    return x.to(device), y.to(device)


def _embed(model: Any, x: Tensor, features: Features | str | None) -> Tensor:
    if callable(features):
        out = features(model, x)
    elif isinstance(features, str):
        out = model.call(features, x)
    elif callable(getattr(model.module, "features", None)):
        out = model.features(x)
    else:
        out = model(x)
    return out.flatten(1)


class MetaObjective:
    """Base for objectives that sample from a labelled target dataset."""

    dataset: Any = None

    def bind(self, dataset: Any) -> MetaObjective:
        if len(dataset) == 0:
            raise ValueError("the labelled target dataset is empty")
        self.dataset = dataset
        return self

    def _check_bound(self) -> None:
        if self.dataset is None:
            raise RuntimeError(
                f"{type(self).__name__} has no target data: pass target=your_labelled_dataset "
                "to MetaWeighter (or call objective.bind(dataset))"
            )

    def check_model(self, model: Any) -> None:
        """Raise ValueError if `model` cannot be judged by this objective (say, it lacks
        the box loss a detection objective calls); any model passes by default."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@register_objective("prototypical", fields={"way": "way", "shot": "shot", "query": "query"},
                    prefetch=True)  # a config's targets use evaluation transforms
class PrototypicalLoss(MetaObjective):
    """Prototypical-network loss on a fresh N-way K-shot episode per call
    (Snell, Swersky and Zemel, NeurIPS 2017), the meta objective of BDW on STL-10.

    Prototypes are the mean support embeddings per class; query logits are the negative
    squared Euclidean distances to the prototypes; the loss is their cross-entropy.
    Support and query go through the network in one batch (train-mode BatchNorm sees the
    whole episode, as in the reference code).

    Args:
        way: classes per episode (the paper: 10).
        shot: labelled support images per class (the paper: 10).
        query: query images per class (the paper: 10, so 200 images an episode).
        features: how to embed: None uses ``model.features`` when the model has it (else
            the model's output), a string names another method, or a callable
            ``(model, x) -> embeddings``.
        seed: seeds the episode sequence: the k-th call draws episode k of the stream
            (seed, process rank), whatever happened before.
        prefetch: gather episode k + 1 in a background thread while the step of episode k
            runs (`betaweighter.data.prefetch`), taking the episode off the step's critical
            path. Only for target data whose items are the same at every read (no random
            augmentation); the trainer turns it on for its evaluation-transformed targets.
    """

    def __init__(
        self, way: int, shot: int, query: int, features: Features | str | None = None,
        seed: int = 0, prefetch: bool = False,
    ) -> None:
        self.way, self.shot, self.query = int(way), int(shot), int(query)
        self.features = features
        self.seed = int(seed)
        self.prefetch = bool(prefetch)
        self.sampler: EpisodeSampler | None = None
        self._loader: Prefetcher | None = None
        self.calls = 0

    def bind(self, dataset: Any) -> PrototypicalLoss:
        super().bind(dataset)
        self.sampler = EpisodeSampler(
            labels_of(dataset), self.way, self.shot, self.query, self.seed
        )
        self._loader = Prefetcher(dataset)
        return self

    def _episode(self, k: int) -> np.ndarray:
        assert self.sampler is not None  # made by `bind`, which __call__ checks
        support, query, _ = self.sampler.sample(k, stream=world()[1])
        return np.concatenate([support, query])

    def __call__(self, model: Any) -> Tensor:
        self._check_bound()
        k = self.calls
        assert self._loader is not None  # made by `bind`
        x, _ = self._loader.get(k, self._episode(k))
        self.calls += 1
        if self.prefetch:
            self._loader.ahead(k + 1, self._episode(k + 1))
        x = x.to(model.device, non_blocking=True)
        emb = _embed(model, x, self.features)
        n_support = self.way * self.shot
        prototypes = emb[:n_support].view(self.way, self.shot, -1).mean(1)
        logits = -torch.cdist(emb[n_support:], prototypes).pow(2)
        labels = torch.arange(self.way, device=emb.device).repeat_interleave(self.query)
        return F.cross_entropy(logits, labels)

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state.get("calls", 0))


class ShuffledBatchObjective(MetaObjective):
    """Base for objectives that read `batch_size` target items per call, walking through
    seeded shuffles of the target set (one stream per process rank); the position in the
    stream is part of the state, so a resumed run reads the same batches."""

    def __init__(self, batch_size: int, seed: int = 0) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.rng = np.random.default_rng([int(seed), world()[1]])
        self._order = np.empty(0, dtype=np.int64)

    def _next_indices(self) -> np.ndarray:
        n = len(self.dataset)
        while len(self._order) < min(self.batch_size, n):
            self._order = np.concatenate([self._order, self.rng.permutation(n)])
        take, self._order = self._order[: self.batch_size], self._order[self.batch_size:]
        return take

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "order": self._order.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.rng.bit_generator.state = state["rng"]
            self._order = np.asarray(state["order"], dtype=np.int64)


class ClassificationLoss(ShuffledBatchObjective):
    """Cross-entropy of the look-ahead model's output on a seeded batch of labelled target
    data (the batches walk through shuffled epochs of the target set).

    Args:
        batch_size: target items per call.
        head: None uses the model's output as logits; a callable ``(model, x) -> logits``
            otherwise (for example a linear head on the features).
        seed: seeds the shuffling.
    """

    def __init__(
        self, batch_size: int = 64, head: Features | None = None, seed: int = 0
    ) -> None:
        super().__init__(batch_size, seed)
        self.head = head

    def __call__(self, model: Any) -> Tensor:
        self._check_bound()
        x, y = _gather(self.dataset, self._next_indices(), model.device)
        logits = self.head(model, x) if self.head is not None else model(x)
        return F.cross_entropy(logits, y)
