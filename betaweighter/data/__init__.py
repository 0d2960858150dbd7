"""Datasets that yield (image, index), labelled target splits and few-shot episodes.

Builders return a `DataBundle` (pool, target_train, target_val, test, ...):
`stl10`, `decathlon`, `image_folders` and `demo` (no download: built from scikit-learn's
own data). Pools yield ``(image, index)``; `Indexed` wraps any dataset the same way.
"""

from betaweighter.data.arrays import TensorImages
from betaweighter.data.bundle import DataBundle
from betaweighter.data.cache import cache_dir
from betaweighter.data.episodes import EpisodeSampler
from betaweighter.data.errors import CorruptDatasetError, DatasetNotFoundError
from betaweighter.data.indexed import Indexed
from betaweighter.data.labels import labels_of
from betaweighter.data.sampler import SubsetEpochSampler
from betaweighter.data.sources.decathlon import DOMAINS as DECATHLON_DOMAINS
from betaweighter.data.sources.decathlon import DecathlonRaw, decathlon
from betaweighter.data.sources.demo import demo
from betaweighter.data.sources.folders import FolderRaw, image_folders
from betaweighter.data.sources.stl10 import STL10Raw, stl10
from betaweighter.data.splits import load_splits, save_splits, stratified_split
from betaweighter.data.transforms import channel_stats, eval_transform, train_transform
from betaweighter.data.views import Transformed

__all__ = [
    "DECATHLON_DOMAINS",
    "CorruptDatasetError",
    "DataBundle",
    "DatasetNotFoundError",
    "DecathlonRaw",
    "EpisodeSampler",
    "FolderRaw",
    "Indexed",
    "STL10Raw",
    "SubsetEpochSampler",
    "TensorImages",
    "Transformed",
    "cache_dir",
    "channel_stats",
    "decathlon",
    "demo",
    "eval_transform",
    "image_folders",
    "labels_of",
    "load_splits",
    "save_splits",
    "stl10",
    "stratified_split",
    "train_transform",
]
