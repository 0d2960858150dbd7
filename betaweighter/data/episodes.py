"""Seeded N-way K-shot episodes (Vinyals et al., NeurIPS 2016; Snell et al., NeurIPS 2017)."""

from __future__ import annotations

from typing import Any

import numpy as np

from betaweighter.errors import DataError

__all__ = ["EpisodeSampler"]


class EpisodeSampler:
    """Draws episodes of `way` classes with `shot` support and `query` query items each.

    ``sample(index, stream)`` returns (support_indices, query_indices, classes) as numpy
    arrays; support and query are class-major (``shot`` items of class 0, then class 1,
    ...) and their label within the episode is position // shot (// query). Episode
    `index` of `stream` is a function of (seed, stream, index) alone, so the k-th episode is
    the same whatever was drawn before (a resumed run draws the same episodes, and each
    process of a distributed run draws its own stream).
    """

    def __init__(self, labels: Any, way: int, shot: int, query: int, seed: int = 0) -> None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        for name, v in (("way", way), ("shot", shot), ("query", query)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.way, self.shot, self.query = int(way), int(shot), int(query)
        classes, counts = np.unique(labels, return_counts=True)
        need = self.shot + self.query
        eligible = classes[counts >= need]
        if len(eligible) < self.way:
            raise DataError(
                f"a {way}-way {shot}-shot {query}-query episode needs {way} classes with at "
                f"least {need} labelled items each; the target set has {len(eligible)} such "
                f"classes (counts per class: {dict(zip(classes.tolist(), counts.tolist()))}). "
                "Use fewer ways, shots or queries, or a larger labelled split."
            )
        self.classes = eligible
        self._by_class = {int(c): np.flatnonzero(labels == c) for c in eligible}
        self.seed = int(seed)

    def sample(self, index: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(stream), int(index)])
        chosen = rng.choice(self.classes, size=self.way, replace=False)
        support, query = [], []
        for c in chosen:
            picks = rng.choice(self._by_class[int(c)], self.shot + self.query, replace=False)
            support.append(picks[: self.shot])
            query.append(picks[self.shot:])
        return np.concatenate(support), np.concatenate(query), chosen
