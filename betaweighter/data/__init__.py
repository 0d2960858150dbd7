"""Datasets that yield (image, index), labelled target splits and few-shot episodes."""

from betaweighter.data.episodes import EpisodeSampler
from betaweighter.data.indexed import Indexed
from betaweighter.data.labels import labels_of

__all__ = ["EpisodeSampler", "Indexed", "labels_of"]
