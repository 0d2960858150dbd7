"""Cluster weights: one learned weight per cluster of the encoder's features, so every
meta-gradient informs many instances.

BDW (Ericsson, Gouk and Hospedales, arXiv:2006.12360) gives each instance free parameters
of its own. Each of them hears one meta-gradient per visit, and one visit's meta-gradient is
mostly episode noise, so ten epochs cannot separate useful data from distractors. Here the
pool is partitioned by k-means over the current model's features (re-clustered as the
features improve), and each instance's weight is

    w_i = sigmoid(a[c(i)] + s * b_i + shift),

with a learned logit ``a`` per cluster, an optional learned per-instance offset ``b``
(scaled by `offset_scale`; 0 switches offsets off) and a pool-wide ``shift`` that keeps the
mean weight over the pool at `init`. The meta-gradient reaches ``a`` through the chain rule,
exactly: every instance of cluster k in a batch adds its dM/dw_i to dM/da_k, so a cluster
hears batch / K meta-gradients per step instead of one per epoch. This is how the methods
that scale share what they learn: per-domain weights (DoReMi, arXiv:2305.10429; DoGE,
arXiv:2310.15393), cluster-level scores in embedding space (Sorscher et al.,
arXiv:2206.14486), and weights learnt on a few and broadcast to neighbours.

Why the mean weight is held fixed: only the *relative* weights say which data teaches. A
common shift of every weight changes how fast the model learns, not what it learns; with
``MetaWeighter(normalise=True)`` it has no effect on the step at all, and without it a mean
that drifts to 0.3 trains at 0.3x the learning rate. Holding the mean at `init` after each
step (a projection) removes that direction, so pruning thresholds keep their meaning and a
weight below the mean says "less useful than the average instance". Competition between the
weights comes from the normalised loss: its meta-gradient is centred over the batch
(dM/dw_i is proportional to -(g_val . (g_i - g_w)), with g_w the batch's weighted mean
gradient), so an instance whose gradient is orthogonal to the target's loses weight against
one that helps.

Re-clustering (`on_epoch_end`, every `refresh_every` epochs) keeps each new cluster's logit
at the mean of its members' old cluster logits, so the learned values move with the data
rather than with the cluster numbering, and a new cluster that merges parts of old ones
starts from their average: the smoothing over feature-space neighbours. Offsets are kept
as they are. With ``prior="target"`` the first clustering starts each cluster's logit from
how close its members lie to the labelled target in the same feature space (NN-Weighter's
signal, Peng et al., ACML 2019), which the meta-gradient then refines.

The weights are point values: `std` is zero and `cdf` thresholds the weight.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from betaweighter.runtime import broadcast_object
from betaweighter.weights.base import LearnedWeights, register_weighting
from betaweighter.weights.embedding import SPACES, embed_all

__all__ = ["PRIORS", "ClusterWeights"]

PRIORS = ("none", "target")
MAX_LOGIT = 12.0


@register_weighting("cluster")
class ClusterWeights(LearnedWeights):
    """Weights shared within k-means clusters of the model's features (see the module
    docstring).

    Args:
        num_instances: size of the unlabelled pool.
        clusters: number of k-means clusters K (a pool smaller than K gets one cluster per
            instance).
        init: the mean weight over the pool, held fixed (in (0, 1)).
        offset_scale: s, the scale of the per-instance offsets (0: none; 1: as free as the
            cluster logits). An offset hears one meta-gradient per visit, which is mostly
            noise, and moves s^2 as far as a cluster logit for the same signal: the default
            0.3 lets offsets carry the target prior's within-cluster ranking (each
            instance's own distance to the target) while the clusters learn.
        space: ``"feature"`` (the model's `features`) or ``"pixel"``; either way each
            instance's vector is L2-normalised before k-means (cosine geometry).
        refresh_every: re-cluster at the end of every this-many epochs (None: never).
        prior: ``"target"`` (clusters nearer the labelled target start higher; see
            `prior_scale`) or ``"none"`` (every cluster starts at the mean).
        prior_scale: the starting logits are ``-prior_scale * z``: without offsets, z is the
            standardised mean distance of a cluster's members to their nearest target
            image; with offsets, each instance starts from its own standardised distance
            (the cluster logit from its members' mean, the offset from the rest).
        max_fit: k-means is fitted on at most this many instances (a seeded subsample),
            then every instance is assigned to its nearest centre.
        seed: seeds k-means (with the epoch), so a resumed run re-clusters identically.
        chunk_size: instances embedded per forward pass.

    Call `fit(pool, target, model)` once before training (the trainer does), and
    `on_epoch_end(epoch, model)` at every epoch's end.
    """

    row_parameters = ("offset",)

    assignment: Tensor
    epochs: Tensor
    fitted: Tensor

    def __init__(
        self,
        num_instances: int,
        clusters: int = 64,
        init: float = 0.5,
        offset_scale: float = 0.3,
        space: str = "feature",
        refresh_every: int | None = 1,
        prior: str = "target",
        prior_scale: float = 1.0,
        max_fit: int = 20000,
        seed: int = 0,
        chunk_size: int = 512,
    ) -> None:
        super().__init__(num_instances)
        checks = {
            "clusters": not isinstance(clusters, bool) and int(clusters) == clusters
            and clusters >= 1,
            "init": 0.0 < init < 1.0,
            "offset_scale": 0.0 <= offset_scale < math.inf,
            "prior_scale": 0.0 <= prior_scale < math.inf,
            "max_fit": int(max_fit) >= 1, "seed": int(seed) >= 0,
            "chunk_size": int(chunk_size) >= 1,
            "refresh_every": refresh_every is None or int(refresh_every) >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid {bad}: need an integer clusters >= 1, 0 < init < 1, "
                             "offset_scale and prior_scale "
                             "finite and >= 0, max_fit, chunk_size, refresh_every >= 1, "
                             "seed >= 0")
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        self.clusters, self.init = int(clusters), float(init)
        self.offset_scale, self.space = float(offset_scale), space
        self.refresh_every = None if refresh_every is None else int(refresh_every)
        self.prior, self.prior_scale = prior, float(prior_scale)
        self.max_fit, self.seed, self.chunk_size = int(max_fit), int(seed), int(chunk_size)
        start = math.log(self.init / (1.0 - self.init))
        self.logit = nn.Parameter(torch.full((self.clusters,), start))
        self.offset = nn.Parameter(torch.zeros(num_instances))
        self.register_buffer("assignment", torch.zeros(num_instances, dtype=torch.long))
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._sources: tuple[Any, Any, nn.Module | None] | None = None

    # -- the weights -------------------------------------------------------------------------
    def logits(self, indices: Tensor | None = None) -> Tensor:
        """a[c(i)] + s * b_i for `indices` (all when None), differentiable."""
        rows = self._rows(indices)
        z = self.logit[self.assignment[rows]]
        if self.offset_scale:
            z = z + self.offset_scale * self.offset[rows]
        return z

    def sample(self, indices: Tensor, losses: Tensor | None = None) -> Tensor:
        return torch.sigmoid(self.logits(indices))

    @torch.no_grad()
    def mean(self, indices: Tensor | None = None) -> Tensor:
        return torch.sigmoid(self.logits(indices))

    @torch.no_grad()
    def std(self, indices: Tensor | None = None) -> Tensor:
        return torch.zeros(self.assignment[self._rows(indices)].shape, device=self.device)

    @torch.no_grad()
    def project_(self) -> None:
        """Finite, bounded logits, shifted so that the pool's mean weight is `init`."""
        for p in (self.logit, self.offset):
            torch.nan_to_num_(p, nan=0.0, posinf=MAX_LOGIT, neginf=-MAX_LOGIT)
            p.clamp_(-MAX_LOGIT, MAX_LOGIT)
        self.logit.add_(_mean_shift(self.logits().double(), self.init))
        self.logit.clamp_(-MAX_LOGIT, MAX_LOGIT)

    # -- the clusters ------------------------------------------------------------------------
    def fit(self, pool: Any, target: Any, model: nn.Module | None = None) -> ClusterWeights:
        """Cluster the pool (in index order; a tensor or a dataset of (x, ...) items) with the
        features of `model` (kept, with the data, for re-clustering). `target` (labelled
        images) is used by ``prior="target"``. A checkpoint restores the clusters, so a
        resumed run calls `fit` only to give the data back: it clusters again only if the
        loaded state was never clustered."""
        if self.space == "feature" and model is None:
            raise ValueError("space='feature' needs the model: fit(pool, target, model=model)")
        if len(pool) != self.num_instances:
            raise ValueError(f"the pool has {len(pool)} items but these weights are for "
                             f"{self.num_instances} instances")
        self._sources = (pool, target, model)
        if not bool(self.fitted):
            self.recluster(first=True)
        return self

    def on_epoch_end(self, epoch: int | None = None, model: nn.Module | None = None) -> bool:
        """Re-cluster when `refresh_every` says so; returns whether it did."""
        self.epochs.fill_(int(epoch) if epoch is not None else int(self.epochs) + 1)
        if model is not None and self._sources is not None:
            self._sources = (*self._sources[:2], model)
        if self.refresh_every is None or int(self.epochs) % self.refresh_every:
            return False
        self.recluster()
        return True

    @torch.no_grad()
    def recluster(self, first: bool = False) -> None:
        """k-means over the current features; each new cluster's logit is the mean of its
        members' old cluster logits (or, on the first fit with ``prior="target"``, the
        target-distance prior)."""
        if self._sources is None:
            raise RuntimeError("ClusterWeights has no data to cluster: call fit(pool, target, "
                               "model) first (again after loading a checkpoint)")
        pool, target, model = self._sources
        model = model if self.space == "feature" else None
        features = _unit(embed_all(pool, model, self.space, self.chunk_size, "clusters",
                                   self.device))
        new = torch.as_tensor(self._kmeans(features), dtype=torch.long, device=self.device)
        old_logit = self.logit[self.assignment].double()
        counts = torch.bincount(new, minlength=self.clusters).double()
        sums = torch.zeros(self.clusters, dtype=torch.float64, device=self.device)
        sums.index_add_(0, new, old_logit)
        values = torch.where(counts > 0, sums / counts.clamp_min(1), sums.new_zeros(()))
        offsets = None
        if first and self.prior == "target":
            targets = _unit(embed_all(target, model, self.space, self.chunk_size,
                                      "clusters target", self.device))
            values, offsets = self._prior(features, targets, new, counts)
        # rank 0's clusters and values on every rank: the weights stay bitwise identical
        new, values, offsets = broadcast_object(
            (new.cpu(), values.cpu(), None if offsets is None else offsets.cpu()))
        new, values = new.to(self.device), values.to(self.device)
        if offsets is not None:
            self.offset.copy_(offsets.to(self.offset))
        self.assignment.copy_(new)
        self.logit.copy_(values.to(self.logit))
        self.fitted.fill_(True)
        self.project_()

    def _kmeans(self, features: Tensor) -> np.ndarray:
        from sklearn.cluster import KMeans

        x = features.double().cpu().numpy()
        rng = np.random.default_rng([self.seed, int(self.epochs)])
        fit_on = x if len(x) <= self.max_fit else x[np.sort(rng.choice(len(x), self.max_fit,
                                                                        replace=False))]
        k = min(self.clusters, len(fit_on))
        km = KMeans(n_clusters=k, n_init=1, random_state=int(rng.integers(2**31 - 1)))
        km.fit(fit_on)
        return km.predict(x).astype(np.int64)

    def _prior(self, features: Tensor, targets: Tensor, assignment: Tensor,
               counts: Tensor) -> tuple[Tensor, Tensor | None]:
        """Starting cluster logits, -prior_scale * z with z the standardised distance of an
        instance to its nearest target averaged over the cluster; with offsets, each
        instance's offset starts at its own deviation from that mean (so the starting
        weight follows the instance's own distance, and the meta-gradient moves whole
        clusters from there)."""
        nearest = torch.cat([torch.cdist(chunk, targets.to(chunk)).min(dim=1).values
                             for chunk in features.split(self.chunk_size)]).double()
        z = (nearest - nearest.mean()) / nearest.std().clamp_min(1e-12) \
            if nearest.numel() > 1 else nearest * 0
        score = -self.prior_scale * z
        sums = torch.zeros(self.clusters, dtype=torch.float64, device=self.device)
        sums.index_add_(0, assignment, score)
        values = torch.where(counts > 0, sums / counts.clamp_min(1), sums.new_zeros(()))
        if not self.offset_scale:  # the clusters' means, standardised over the clusters
            used = counts > 0
            m = values[used]
            values[used] = self.prior_scale * (m - m.mean()) / m.std().clamp_min(1e-12) \
                if m.numel() > 1 else m * 0
            return values, None
        return values, (score - values[assignment]) / self.offset_scale

    def cluster_sizes(self) -> Tensor:
        """Members per cluster."""
        return torch.bincount(self.assignment, minlength=self.clusters)


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _mean_shift(z: Tensor, target: float, iters: int = 50) -> float:
    """delta such that mean(sigmoid(z + delta)) = target (Newton's method on a monotone,
    convex-concave function, started from the logit gap; bisection fallback)."""
    goal = math.log(target / (1.0 - target))
    lo, hi = goal - float(z.max()) - 1.0, goal - float(z.min()) + 1.0
    delta = goal - float(z.mean())
    for _ in range(iters):
        s = torch.sigmoid(z + delta)
        f = float(s.mean()) - target
        if abs(f) < 1e-12:
            break
        if f > 0:
            hi = delta
        else:
            lo = delta
        slope = float((s * (1 - s)).mean())
        step = delta - f / slope if slope > 0 else math.nan
        delta = step if lo < step < hi else (lo + hi) / 2
    return delta
