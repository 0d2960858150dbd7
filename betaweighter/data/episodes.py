"""Seeded N-way K-shot episodes (Vinyals et al., NeurIPS 2016; Snell et al., NeurIPS 2017)."""

from __future__ import annotations

from typing import Any

import numpy as np


class EpisodeSampler:
    """Draws episodes of `way` classes with `shot` support and `query` query items each.

    Each call to `sample()` returns (support_indices, query_indices, classes) as numpy
    arrays; support and query are class-major (``shot`` items of class 0, then class 1,
    ...) and their label within the episode is position // shot (// query). The sequence
    is fully determined by `seed` and can be saved and restored with `state_dict`.
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
            raise ValueError(
                f"a {way}-way {shot}-shot {query}-query episode needs {way} classes with at "
                f"least {need} labelled items each; the target set has {len(eligible)} such "
                f"classes (counts per class: {dict(zip(classes.tolist(), counts.tolist()))}). "
                "Use fewer ways, shots or queries, or a larger labelled split."
            )
        self.classes = eligible
        self._by_class = {int(c): np.flatnonzero(labels == c) for c in eligible}
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        chosen = self.rng.choice(self.classes, size=self.way, replace=False)
        support, query = [], []
        for c in chosen:
            picks = self.rng.choice(self._by_class[int(c)], self.shot + self.query, replace=False)
            support.append(picks[: self.shot])
            query.append(picks[self.shot:])
        return np.concatenate(support), np.concatenate(query), chosen

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
