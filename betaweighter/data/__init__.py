"""Datasets that yield (image, index), labelled target splits, few-shot episodes and
detection sets.

Builders return a `DataBundle` (pool, target_train, target_val, test, ...):
`stl10`, `decathlon`, `image_folders`, and three built offline from scikit-learn's
data and drawn shapes: `demo`, `mixture` and `shapes` (detection scenes). Pools yield
``(image, index)``; `Indexed` wraps any dataset the same way.
`labelled_folder_splits` and `pooled_folders` read downstream classification tasks for the
evaluators, `load_coco` and `load_voc` detection sets (``masks=True``: COCO instance masks),
`load_voc_segmentation` and `load_mask_folder` semantic-segmentation sets.
"""

from betaweighter.data.arrays import TensorImages
from betaweighter.data.bundle import DataBundle
from betaweighter.data.cache import cache_dir
from betaweighter.data.detection import DetectionDataset, collate_detection, load_coco, load_voc
from betaweighter.data.episodes import EpisodeSampler
from betaweighter.data.indexed import Indexed
from betaweighter.data.labelled import labelled_folder_splits, pooled_folders
from betaweighter.data.labels import labels_of
from betaweighter.data.loaders import forever
from betaweighter.data.sampler import SubsetEpochSampler
from betaweighter.data.segmentation import (
    SegmentationDataset,
    load_mask_folder,
    load_voc_segmentation,
)
from betaweighter.data.sources.decathlon import DOMAINS as DECATHLON_DOMAINS
from betaweighter.data.sources.decathlon import DecathlonRaw, decathlon
from betaweighter.data.sources.demo import demo
from betaweighter.data.sources.folders import FolderRaw, image_folders
from betaweighter.data.sources.mixture import mixture
from betaweighter.data.sources.shapes import (
    SHAPE_CLASSES,
    BoxedImages,
    shapes,
    write_shapes_coco,
    write_shapes_voc,
)
from betaweighter.data.sources.stl10 import STL10Raw, stl10
from betaweighter.data.splits import load_splits, save_splits, stratified_split
from betaweighter.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    channel_stats,
    eval_transform,
    finetune_transform,
    train_transform,
)
from betaweighter.data.views import Transformed
from betaweighter.errors import CorruptDatasetError, DataError, DatasetNotFoundError

__all__ = [
    "DECATHLON_DOMAINS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPE_CLASSES",
    "BoxedImages",
    "CorruptDatasetError",
    "DataBundle",
    "DataError",
    "DatasetNotFoundError",
    "DecathlonRaw",
    "DetectionDataset",
    "EpisodeSampler",
    "FolderRaw",
    "Indexed",
    "STL10Raw",
    "SegmentationDataset",
    "SubsetEpochSampler",
    "TensorImages",
    "Transformed",
    "cache_dir",
    "channel_stats",
    "collate_detection",
    "decathlon",
    "demo",
    "eval_transform",
    "finetune_transform",
    "forever",
    "image_folders",
    "labelled_folder_splits",
    "labels_of",
    "load_coco",
    "load_mask_folder",
    "load_splits",
    "load_voc",
    "load_voc_segmentation",
    "mixture",
    "pooled_folders",
    "save_splits",
    "shapes",
    "stl10",
    "stratified_split",
    "train_transform",
    "write_shapes_coco",
    "write_shapes_voc",
]
