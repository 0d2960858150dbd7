"""Few-shot evaluation on frozen features over a fixed, serialisable list of episodes.

Protocol of "How Well Do Self-Supervised Models Transfer?" (arXiv:2011.13377, few-shot
section, after the CD-FSL benchmark): N-way K-shot episodes with 15 queries per class, 600
episodes; each query is given the class of the nearest class mean of the support features
(squared Euclidean distance, i.e. Prototypical Networks without training, Snell et al.
2017); the result is the mean accuracy over episodes with a 95 % confidence interval.

Fixes over the original code: the episodes are an explicit seeded list (`Episodes`) that
can be saved and loaded, so two backbones can be compared on identical episodes; features
are extracted once per image instead of loading every decoded image into memory; and
logistic regression on the support set is available as a second classifier.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from betaweighter.data.episodes import EpisodeSampler
from betaweighter.evaluate.features import extract_features
from betaweighter.evaluate.metrics import mean_confidence_interval
from betaweighter.io import write_json
from betaweighter.runtime import progress_disabled

__all__ = ["Episodes", "evaluate_fewshot", "fit_fewshot", "make_episodes", "nearest_class_mean"]

CLASSIFIERS = ("ncm", "logistic")
FEATURE_NORMS = ("none", "l2")


def labels_digest(labels: np.ndarray) -> str:
    """SHA-256 of a label array: ties an episode list to the dataset it indexes."""
    return hashlib.sha256(np.asarray(labels, dtype=np.int64).reshape(-1).tobytes()).hexdigest()


@dataclass
class Episodes:
    """A fixed list of N-way K-shot episodes over the items of one labelled dataset.

    ``support[e]`` holds ``way * shot`` dataset indices of episode e, class-major (item j
    belongs to episode class ``j // shot``); ``query[e]`` holds ``way * query`` indices
    (class ``j // query``); ``classes[e]`` the dataset labels of the episode's classes.
    """

    way: int
    shot: int
    query: int
    seed: int
    labels_sha256: str
    support: list[list[int]] = field(repr=False)
    queries: list[list[int]] = field(repr=False)
    classes: list[list[int]] = field(repr=False)

    def __len__(self) -> int:
        return len(self.support)

    def save(self, path: str | Path) -> Path:
        """Write the episodes as JSON."""
        return write_json(path, asdict(self), indent=None)

    @classmethod
    def load(cls, path: str | Path) -> Episodes:
        """Read episodes written by `save`."""
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"cannot read an episode list from {path}: {err}") from err

    def check(self, labels: np.ndarray) -> None:
        """Raise unless these episodes were drawn from a dataset with exactly `labels`."""
        if labels_digest(labels) != self.labels_sha256:
            raise ValueError(
                "the episode list was drawn from another dataset (its label digest differs); "
                "draw new episodes with make_episodes for this dataset"
            )


def make_episodes(labels: np.ndarray, way: int = 5, shot: int = 5, query: int = 15,
                  episodes: int = 600, seed: int = 0) -> Episodes:
    """Draw `episodes` episodes with `betaweighter.data.EpisodeSampler`; the same labels,
    sizes and seed give the same list. Only classes with at least shot + query items
    can be drawn (the sampler raises a clear error when fewer than `way` qualify)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    sampler = EpisodeSampler(labels, way, shot, query, seed=seed)
    support, queries, classes = [], [], []
    for i in range(episodes):
        s, q, c = sampler.sample(i)
        support.append(s.tolist())
        queries.append(q.tolist())
        classes.append(np.asarray(c).tolist())
    return Episodes(way, shot, query, seed, labels_digest(labels), support, queries, classes)


def nearest_class_mean(support: np.ndarray, support_labels: np.ndarray,
                       query: np.ndarray) -> np.ndarray:
    """Predict, for each query row, the support label whose mean feature is nearest in
    squared Euclidean distance (ties go to the smaller label)."""
    labels = np.unique(support_labels)
    means = np.stack([support[support_labels == c].mean(axis=0) for c in labels])
    d = (query**2).sum(1, keepdims=True) - 2.0 * query @ means.T + (means**2).sum(1)[None]
    return labels[np.argmin(d, axis=1)]


def fit_fewshot(features: np.ndarray, labels: np.ndarray, episodes: Episodes, *,
                classifier: str = "ncm", logistic_c: float = 1.0,
                feature_norm: str = "none") -> dict[str, Any]:
    """Accuracy over `episodes` of the items described by (features, labels).

    `classifier` is "ncm" (the paper's nearest class mean) or "logistic" (scikit-learn
    L-BFGS logistic regression with inverse regularisation `logistic_c` fitted on each
    support set). `feature_norm` "l2" scales every feature vector to unit length first.
    Returns the mean accuracy, its 95 % confidence half-width and the per-episode values.
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    if feature_norm not in FEATURE_NORMS:
        raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}, got {feature_norm!r}")
    episodes.check(labels)
    x = np.asarray(features, dtype=np.float64)
    if feature_norm == "l2":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y_support = np.repeat(np.arange(episodes.way), episodes.shot)
    y_query = np.repeat(np.arange(episodes.way), episodes.query)
    # one BLAS thread: tiny per-episode problems run ~10x slower with thread hand-offs
    with threadpool_limits(limits=1, user_api="blas"):
        accs = [_episode_accuracy(x[np.asarray(s)], y_support, x[np.asarray(q)], y_query,
                                  classifier, logistic_c)
                for s, q in tqdm(zip(episodes.support, episodes.queries), total=len(episodes),
                                 desc="few-shot episodes", disable=progress_disabled(),
                                 leave=False)]
    mean, half_width = mean_confidence_interval(accs)
    return {"accuracy": mean, "ci95": half_width, "episodes": len(accs),
            "way": episodes.way, "shot": episodes.shot, "query": episodes.query,
            "seed": episodes.seed, "classifier": classifier, "feature_norm": feature_norm,
            "episode_accuracies": accs}


def _episode_accuracy(xs: np.ndarray, ys: np.ndarray, xq: np.ndarray, yq: np.ndarray,
                      classifier: str, logistic_c: float) -> float:
    if classifier == "ncm":
        pred = nearest_class_mean(xs, ys, xq)
    else:
        clf = LogisticRegression(C=logistic_c, solver="lbfgs", max_iter=1000).fit(xs, ys)
        pred = clf.predict(xq)
    return float(np.mean(pred == yq))


def evaluate_fewshot(model: Any, dataset: Any, *, way: int = 5, shot: int = 5, query: int = 15,
            episodes: int | Episodes = 600, seed: int = 0, batch_size: int = 64,
            num_workers: int = 0, device: Any = None, cache_dir: Any = None,
            **options: Any) -> dict[str, Any]:
    """Few-shot accuracy of ``model.features`` on a dataset yielding (image, label).

    Features of every item are extracted once. `episodes` is a count (a new seeded list is
    drawn) or an `Episodes` list to reuse; `options` go to `fit_fewshot`.
    """
    features, labels = extract_features(model, dataset, batch_size=batch_size,
                                        num_workers=num_workers, device=device,
                                        cache_dir=cache_dir, name="fewshot")
    if not isinstance(episodes, Episodes):
        episodes = make_episodes(labels, way, shot, query, episodes, seed)
    return fit_fewshot(features, labels, episodes, **options)
