"""What every dataset builder returns: the pool, the labelled target splits, the test set
and the facts a run needs about them, in one uniform object."""

from __future__ import annotations

import os
from collections.abc import Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from torch.utils.data import Dataset

from betaweighter.data.splits import save_splits

__all__ = ["DataBundle"]


@dataclass
class DataBundle:
    """The data of one experiment.

    Attributes:
        name: e.g. ``"stl10"``, ``"decathlon/dtd"``, ``"demo"``.
        pool: the unlabelled pool; yields ``(image, index)`` (the index picks the weight).
        target_train: labelled target data for the meta objective and the linear-probe fit;
            yields ``(image, label)`` and has ``targets``.
        target_val: labelled target data for model selection; same form.
        test: the held-out test set; same form.
        num_classes: number of target classes.
        image_size: side of the square tensors the model receives.
        mean, std: the target's per-channel normalisation.
        in_domain: optional bool array over the pool, True where an instance comes from the
            target domain (the demo set and Visual Decathlon know it), for pruning reports.
        detection_target: optional labelled detection images (``(image, {"boxes",
            "labels"})``, normalised like the pool) for a detection meta objective.
        splits: every seeded index split that defines the bundle; `save_splits` writes it
            with the run, and the builders' ``splits=`` argument reads it back.
        info: anything else worth recording (seed, sizes, per-domain statistics, ...).
    """

    name: str
    pool: Dataset
    target_train: Dataset
    target_val: Dataset
    test: Dataset
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_domain: np.ndarray | None = None
    detection_target: Dataset | None = None
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.in_domain is not None:
            self.in_domain = np.asarray(self.in_domain, dtype=bool).reshape(-1)
            pool_size = len(cast(Sized, self.pool))
            if len(self.in_domain) != pool_size:
                raise ValueError(
                    f"in_domain has {len(self.in_domain)} entries for a pool of {pool_size}"
                )

    def save_splits(self, path: str | os.PathLike) -> Path:
        """Write the splits (and `info`'s scalars) as JSON, e.g. ``run_dir/splits.json``."""
        meta: dict[str, Any] = {"dataset": self.name}
        meta.update({k: v for k, v in self.info.items()
                     if isinstance(v, (str, int, float, bool, type(None), list))})
        return save_splits(path, self.splits, meta)

    def summary(self) -> str:
        """One line: sizes of every part (and the in-domain share of the pool)."""
        pool, train, val, test = (len(cast(Sized, d)) for d in
                                  (self.pool, self.target_train, self.target_val, self.test))
        line = (f"{self.name}: pool {pool}, target_train {train}, "
                f"target_val {val}, test {test}, "
                f"{self.num_classes} classes, {self.image_size}px")
        if self.in_domain is not None:
            line += f", {int(self.in_domain.sum())} in-domain in the pool"
        return line
