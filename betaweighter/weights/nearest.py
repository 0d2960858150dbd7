"""NN-Weighter: a hand-designed weight from the distance to the labelled target data.

The paper's hand-designed baseline, after Peng et al. (ACML 2019) as Ericsson et al.
(arXiv:2006.12360) used it: an unlabelled instance counts more the closer it lies to some
labelled target image,

    w_i = exp(-k * d_i),   d_i = min_t ||x_i - x_t||_2,

so an exact copy of a target image has weight 1 and the weight decays with distance. The
distance is taken in pixel space (the reference code's choice) or in the current model's
feature space (``space="feature"``), computed once by `fit`, or again every
`refresh_every` epochs (call `on_epoch_end` at each epoch's end). `k` defaults to
1 / median(d), so the median instance gets weight exp(-1).

Search is exact and chunked: `torch.cdist` (or scikit-learn's `NearestNeighbors`) finds
each instance's nearest target a chunk at a time, then the distance to that neighbour is
recomputed directly as ||x_i - x_t||, so the matrix-product shortcut's rounding cannot make
an exact copy look distant. Nothing is learnt (a `WeightRule`); `std` is zero and
`cdf` thresholds the weight (the point-mass fallback of `InstanceWeights`). The distances,
`k` and the epoch count are in the `state_dict`, so a checkpoint restores the weights
without refitting; the data are not, so a resumed run that still has refreshes to do calls
`fit` again first. The reference code queried one random augmentation of each image; here
the pool is used as given (pass an augmented view to match it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from betaweighter.weights.base import WeightRule, register_weighting
from betaweighter.weights.embedding import SPACES, embed

__all__ = ["NearestNeighbourWeights"]

BACKENDS = ("torch", "sklearn")


@register_weighting("nn")
class NearestNeighbourWeights(WeightRule):
    """w_i = exp(-k * distance from instance i to its nearest labelled target image).

    Args:
        num_instances: size of the unlabelled pool.
        k: decay rate; None sets it to 1 / median distance at every (re)fit.
        space: ``"pixel"`` (flattened inputs) or ``"feature"`` (``model.features`` when the
            model has it, else the model's output, in eval mode).
        refresh_every: recompute the distances at the end of every this-many epochs
            (see `on_epoch_end`); None computes them once.
        backend: ``"torch"`` (`torch.cdist`) or ``"sklearn"`` (`NearestNeighbors`).
        chunk_size: pool and target instances embedded and compared per chunk.
    """


    distance: Tensor
    k: Tensor
    epochs: Tensor

    def __init__(
        self,
        num_instances: int,
        k: float | None = None,
        space: str = "pixel",
        refresh_every: int | None = None,
        backend: str = "torch",
        chunk_size: int = 1024,
    ) -> None:
        super().__init__(num_instances)
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if k is not None and not (k > 0 and math.isfinite(k)):
            raise ValueError(f"k must be a positive finite number or None, got {k}")
        if refresh_every is not None and int(refresh_every) < 1:
            raise ValueError(f"refresh_every must be >= 1 or None, got {refresh_every}")
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.fixed_k = None if k is None else float(k)
        self.space = space
        self.refresh_every = None if refresh_every is None else int(refresh_every)
        self.backend = backend
        self.chunk_size = int(chunk_size)
        self.register_buffer("distance", torch.full((num_instances,), float("nan")))
        self.register_buffer("k", torch.tensor(float("nan")))
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))
        self._sources: tuple[Any, Any, nn.Module | None] | None = None

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, pool: Any, target: Any,
            model: nn.Module | None = None) -> NearestNeighbourWeights:
        """Compute every instance's distance to its nearest target image.

        Args:
            pool: the unlabelled pool, in index order: a tensor (N, ...) or a map-style
                dataset whose items are inputs or tuples starting with the input (so
                `bw.data.Indexed` pools and labelled datasets both work).
            target: the labelled target images, in the same forms.
            model: the model whose features to use (``space="feature"`` only). It is kept,
                with `pool` and `target`, for later refreshes.
        """
        if self.space == "feature" and model is None:
            raise ValueError("space='feature' needs the model: fit(pool, target, model=model)")
        if len(pool) != self.num_instances:
            raise ValueError(f"the pool has {len(pool)} items but these weights are for "
                             f"{self.num_instances} instances")
        if len(target) == 0:
            raise ValueError("the labelled target set is empty")
        self._sources = (pool, target, model)
        self.refresh()
        return self

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the distances (and `k`, unless fixed) from the data given to `fit`."""
        if self._sources is None:
            raise RuntimeError("NearestNeighbourWeights has no data to refresh from: call "
                               "fit(pool, target[, model]) first (again after loading a "
                               "checkpoint)")
        pool, target, model = self._sources
        model = model if self.space == "feature" else None
        targets = torch.cat(list(self._embed(target, model, "target")))
        nearest = self._index(targets)
        distances = torch.cat([
            (chunk - targets[nearest(chunk)].to(chunk)).norm(dim=1)
            for chunk in self._embed(pool, model, "pool")
        ])
        self.distance.copy_(distances.to(self.distance))
        self.k.fill_(self.fixed_k if self.fixed_k is not None else _inverse_median(distances))

    def on_epoch_end(self, epoch: int | None = None, model: nn.Module | None = None) -> bool:
        """Call at the end of every epoch; refreshes the distances when `refresh_every`
        says so and returns whether it did.

        Args:
            epoch: the number of epochs finished (the trainer passes it); None counts the
                calls instead.
            model: the model whose features to use from now on (default: the one given to
                `fit`).
        """
        if epoch is None:
            self.epochs += 1
        else:
            self.epochs.fill_(int(epoch))
        if model is not None and self._sources is not None:
            self._sources = (*self._sources[:2], model)
        if self.refresh_every is None or int(self.epochs) % self.refresh_every:
            return False
        self.refresh()
        return True

    def _embed(self, data: Any, model: nn.Module | None, name: str) -> Iterator[Tensor]:
        return embed(data, model, self.space, self.chunk_size, f"NN-Weighter {name}",
                     self.device)

    def _index(self, targets: Tensor) -> Callable[[Tensor], Tensor]:
        """A search over `targets`: queries -> index of each query's nearest target. The
        distance is then recomputed directly, so rounding in the search (the matrix-product
        form of the distance) cannot make an exact copy look distant."""
        if self.backend == "sklearn":
            from sklearn.neighbors import NearestNeighbors

            index = NearestNeighbors(n_neighbors=1).fit(targets.double().cpu().numpy())

            def search_sklearn(queries: Tensor) -> Tensor:
                found = index.kneighbors(queries.double().cpu().numpy(), return_distance=False)
                return torch.as_tensor(found[:, 0], device=targets.device)

            return search_sklearn

        def search(queries: Tensor) -> Tensor:
            best = torch.full((len(queries),), math.inf, device=queries.device)
            found = torch.zeros(len(queries), dtype=torch.long, device=queries.device)
            for start in range(0, len(targets), self.chunk_size):
                block = targets[start:start + self.chunk_size].to(queries)
                d, j = torch.cdist(queries, block).min(dim=1)
                better = d < best
                best = torch.where(better, d, best)
                found = torch.where(better, j + start, found)
            return found.to(targets.device)

        return search

    # -- the interface ---------------------------------------------------------------------
    def weights(self, indices: Tensor, losses: Tensor | None = None, *, step: int = 0,
                meta_grad: Tensor | None = None) -> Tensor:
        return self.mean(indices)

    @torch.no_grad()
    def mean(self, indices: Tensor | None = None) -> Tensor:
        if not bool(torch.isfinite(self.k)):
            raise RuntimeError("NearestNeighbourWeights are not fitted: call "
                               "weights.fit(pool, target) (or load a state_dict) first")
        return torch.exp(-self.k * self.distance[self._rows(indices)])

    @torch.no_grad()
    def std(self, indices: Tensor | None = None) -> Tensor:
        return torch.zeros_like(self.distance[self._rows(indices)])


def _inverse_median(distances: Tensor) -> float:
    """1 / median distance; the median of the positive ones if most are exact copies."""
    positive = distances[distances > 0]
    if positive.numel() == 0:
        return 1.0
    median = distances.median() if distances.median() > 0 else positive.median()
    return 1.0 / float(median)
