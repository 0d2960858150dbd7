"""Feature statistics and the Mahalanobis whitening behind the invariance metric.

Ericsson, Gouk and Hospedales ("Why Do Self-Supervised Models Transfer?", arXiv:2111.11398)
compare the features of an image and of a transformed copy after centring them on the
mean feature of a reference set and whitening them with its covariance Sigma: the cosine
of ``(f0 - mu)`` and ``(fj - mu)`` under the inner product ``P = Sigma^-1``, and the
Mahalanobis distance ``||f0 - fj||_P``. Their code inverts ``np.cov`` and takes a Cholesky
factor of the inverse; any ``W`` with ``W W^T = P`` gives the same numbers (Cholesky,
``Sigma^-1/2`` and ZCA agree to 1e-11 on a random case), so here ``W`` comes from an
eigendecomposition of Sigma (``numpy.linalg.eigh``, float64) with the eigenvalues floored
at a small fraction of the largest one: stable where an explicit inverse is not.

When the reference set has no more images than the feature has dimensions (N <= D), the
sample covariance is singular and its inverse meaningless. ``shrinkage="auto"`` then says
so and uses the Ledoit-Wolf shrunk covariance (Ledoit and Wolf, 2004; scikit-learn's
`sklearn.covariance.LedoitWolf`), which is always well conditioned. The paper had no such
case (2048-d features, 50,000 ImageNet validation images).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf

__all__ = ["SHRINKAGE", "FeatureStats"]

SHRINKAGE = ("auto", "none", "ledoit_wolf")
DEFAULT_FLOOR = 1e-10


@dataclass
class FeatureStats:
    """Mean, covariance and whitening matrix of a reference set's features.

    ``whiten(f) = (f - mean) @ whitening``, with ``whitening @ whitening.T`` the (floored)
    inverse covariance, so the cosine of two whitened vectors is the paper's
    Mahalanobis-normalised cosine and the norm of their difference the Mahalanobis
    distance. `shrinkage` is the Ledoit-Wolf coefficient that was applied (0 for none),
    `count` the number of reference images, `floored` how many eigenvalues were raised
    to the floor.
    """

    mean: np.ndarray
    covariance: np.ndarray
    count: int
    shrinkage: float = 0.0
    floor: float = DEFAULT_FLOOR
    whitening: np.ndarray = field(init=False, repr=False)
    floored: int = field(init=False)

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        self.covariance = np.asarray(self.covariance, dtype=np.float64)
        d = self.mean.size
        if self.covariance.shape != (d, d):
            raise ValueError(f"covariance must be {d}x{d} for a {d}-d mean, got "
                             f"{self.covariance.shape}")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.covariance).all()):
            raise ValueError("the feature statistics contain NaN or infinity: the backbone "
                             "produced non-finite features")
        values, vectors = np.linalg.eigh((self.covariance + self.covariance.T) / 2)
        top = float(values.max()) if values.size else 0.0
        if top <= 0:
            raise ValueError("the reference features have zero variance (every image gives "
                             "the same feature): the metric is undefined for this model")
        limit = top * self.floor
        self.floored = int((values < limit).sum())
        self.whitening = vectors / np.sqrt(np.maximum(values, limit))

    @property
    def dim(self) -> int:
        return int(self.mean.size)

    def whiten(self, features: Any) -> np.ndarray:
        """``(features - mean) @ whitening`` for an (N, D) array (float64)."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"expected (N, {self.dim}) features, got {f.shape}")
        return (f - self.mean) @ self.whitening

    def mahalanobis(self, a: Any, b: Any) -> np.ndarray:
        """Row-wise Mahalanobis distance ``sqrt((a - b)^T P (a - b))``."""
        return np.linalg.norm(self.whiten(a) - self.whiten(b), axis=1)

    @classmethod
    def from_features(cls, features: Any, shrinkage: str | float = "auto",
                      floor: float = DEFAULT_FLOOR) -> FeatureStats:
        """Statistics of an (N, D) feature array.

        `shrinkage`: ``"auto"`` (Ledoit-Wolf when N <= D, with a warning, else the sample
        covariance), ``"none"`` (the sample covariance, ``np.cov`` as in the paper),
        ``"ledoit_wolf"``, or a number a in [0, 1] for ``(1 - a) S + a (tr S / D) I``.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"need (N, D) reference features with N >= 2, got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("the reference features contain NaN or infinity: the backbone "
                             "diverged or the checkpoint is broken")
        n, d = x.shape
        mode = _check_shrinkage(shrinkage)
        singular = n <= d
        if mode == "auto":
            if singular:
                warnings.warn(
                    f"the reference set has {n} images for {d}-d features, too few for a "
                    f"covariance (it needs more than {d}, ideally about {10 * d}): using "
                    "Ledoit-Wolf shrinkage instead of the paper's plain inverse. Give more "
                    "reference images for the unshrunk metric.", stacklevel=3)
            mode = "ledoit_wolf" if singular else "none"
        elif mode == "none" and singular:
            warnings.warn(f"the reference set has {n} images for {d}-d features: the "
                          "covariance is singular and its smallest eigenvalues are floored; "
                          "shrinkage='auto' or 'ledoit_wolf' is better defined", stacklevel=3)
        mean = x.mean(axis=0)
        if mode == "ledoit_wolf":
            lw = LedoitWolf(assume_centered=False).fit(x)
            return cls(mean, lw.covariance_, n, float(lw.shrinkage_), floor)
        cov = np.atleast_2d(np.cov(x, rowvar=False))
        if isinstance(mode, float) and mode > 0:
            target = np.trace(cov) / d * np.eye(d)
            return cls(mean, (1 - mode) * cov + mode * target, n, mode, floor)
        return cls(mean, cov, n, 0.0, floor)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (without the matrices)."""
        return {"count": self.count, "dim": self.dim, "shrinkage": self.shrinkage,
                "floor": self.floor, "floored_eigenvalues": self.floored}


def _check_shrinkage(shrinkage: str | float) -> str | float:
    if isinstance(shrinkage, bool):
        raise ValueError(f"shrinkage must be one of {SHRINKAGE} or a number in [0, 1], "
                         f"got {shrinkage!r}")
    if isinstance(shrinkage, (int, float)):
        if not 0 <= float(shrinkage) <= 1:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
        return float(shrinkage)
    if shrinkage not in SHRINKAGE:
        raise ValueError(f"shrinkage must be one of {SHRINKAGE} or a number in [0, 1], "
                         f"got {shrinkage!r}")
    return shrinkage
