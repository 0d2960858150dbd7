"""The Visual Decathlon (Rebuffi, Bilen and Vedaldi, NeurIPS 2017) from its official layout.

::

    root/decathlon-1.0/annotations/<domain>_{train,val,test}.json
    root/decathlon-1.0/data/<domain>/...          (the images, named in the JSON)

Annotation files are COCO-style: ``images`` (``id``, ``file_name`` relative to
``decathlon-1.0/``), ``annotations`` (``image_id``, ``category_id``) and ``categories``
(``id``, ``name``). Test labels are private: the test file (``<domain>_test.json``, or the
devkit's ``<domain>_test_stripped.json``) has no annotations, so the official ``val`` split
serves as the test set. Images are pre-resized to 72 px on the short side; training takes
random 64 px crops as in Rebuffi et al.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from betaweighter.data.bundle import DataBundle
from betaweighter.data.cache import memoize_json
from betaweighter.data.images import read_image
from betaweighter.data.indexed import Indexed
from betaweighter.data.options import SEED, Range, integer, ranged
from betaweighter.data.sources import register_data_source
from betaweighter.data.splits import SplitsArg, resolve_splits, stratified_split
from betaweighter.data.transforms import channel_stats, eval_transform, train_transform
from betaweighter.data.views import Transformed
from betaweighter.errors import CorruptDatasetError, DatasetNotFoundError

__all__ = ["DOMAINS", "HOW_TO_GET", "SPLITS", "annotation_file", "decathlon", "decathlon_dir",
           "DecathlonRaw", "domain_stats"]

DOMAINS = ("aircraft", "cifar100", "daimlerpedcls", "dtd", "gtsrb", "imagenet12", "omniglot",
           "svhn", "ucf101", "vgg-flowers")
SPLITS = ("train", "val", "test")

HOW_TO_GET = (
    "Get the Visual Decathlon from https://www.robots.ox.ac.uk/~vgg/decathlon/ (the devkit "
    "decathlon-1.0-devkit.tar.gz for the annotations, decathlon-1.0-data.tar.gz for the "
    "images, and the ImageNet part from image-net.org) and extract them so that "
    "ROOT/decathlon-1.0/annotations/ and ROOT/decathlon-1.0/data/<domain>/ exist. torchvision "
    "cannot download it."
)


def decathlon_dir(root: str | os.PathLike) -> Path:
    """``root/decathlon-1.0``, or `root` when it already is that folder."""
    root = Path(root).expanduser()
    return root if root.name == "decathlon-1.0" else root / "decathlon-1.0"


def annotation_file(root: str | os.PathLike, domain: str, split: str) -> Path:
    """The annotation JSON of (domain, split); the devkit's ``_test_stripped`` name for test
    is accepted too. Raises `DatasetNotFoundError` naming the expected file."""
    folder = decathlon_dir(root) / "annotations"
    candidates = [folder / f"{domain}_{split}.json"]
    if split == "test":
        candidates.append(folder / f"{domain}_test_stripped.json")
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetNotFoundError(f"Visual Decathlon {domain} {split} annotations", candidates[0],
                               HOW_TO_GET.replace("ROOT", str(decathlon_dir(root).parent)))


class DecathlonRaw(Dataset):
    """One (domain, split) of the Visual Decathlon: yields ``(uint8 tensor (3, H, W),
    label)``, labels 0..C-1 in the order of the category ids, -1 when the split has no
    annotations (test). ``targets`` holds the labels and ``classes`` the category names."""

    def __init__(self, root: str | os.PathLike, domain: str, split: str) -> None:
        if domain not in DOMAINS:
            raise ValueError(f"unknown Visual Decathlon domain {domain!r}; one of {DOMAINS}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.domain, self.split = domain, split
        self.base = decathlon_dir(root)
        self.annotations = annotation_file(root, domain, split)
        self._how = HOW_TO_GET.replace("ROOT", str(self.base.parent))
        doc = self._load_json()
        self.classes, self.files, self.targets = self._parse(doc)
        image_dir = self.base / "data" / domain
        if not image_dir.is_dir():
            raise DatasetNotFoundError(f"Visual Decathlon {domain} images", image_dir, self._how)
        if len(self.files) and not (self.base / self.files[0]).is_file():
            raise DatasetNotFoundError(f"Visual Decathlon {domain} image",
                                       self.base / self.files[0], self._how)

    def _load_json(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.annotations.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptDatasetError(self.annotations, f"not valid JSON ({err})",
                                      "Extract the devkit again.") from err
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
            raise CorruptDatasetError(self.annotations, "no 'images' list: not a COCO-style "
                                      "Visual Decathlon annotation file")
        return doc

    def _parse(self, doc: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
        try:
            cats = sorted(doc.get("categories", []), key=lambda c: c["id"])
            label_of = {c["id"]: i for i, c in enumerate(cats)}
            row_of = {im["id"]: r for r, im in enumerate(doc["images"])}
            files = np.asarray([im["file_name"] for im in doc["images"]], dtype=str)
            targets = np.full(len(files), -1, dtype=np.int64)
            for ann in doc.get("annotations", []):
                targets[row_of[ann["image_id"]]] = label_of[ann["category_id"]]
        except (KeyError, TypeError) as err:
            raise CorruptDatasetError(self.annotations, f"missing or unknown id or key {err} "
                                      "in images/annotations/categories") from err
        if self.split != "test" and len(files) and (targets < 0).any():
            raise CorruptDatasetError(self.annotations, f"{int((targets < 0).sum())} images "
                                      "have no annotation in a labelled split")
        return [str(c.get("name", c["id"])) for c in cats], files, targets

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return read_image(self.base / str(self.files[i]), self._how), int(self.targets[i])


def domain_stats(raw: DecathlonRaw, items: int,
                 cache: str | os.PathLike | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Channel mean/std of a domain's train images (a fixed sample of `items`, the same for
    every run), cached by annotation file."""
    stat = raw.annotations.stat()
    key = {"file": str(raw.annotations.resolve()), "mtime": stat.st_mtime_ns,
           "size": stat.st_size, "items": items}
    mean, std = memoize_json(key, lambda: channel_stats(
        raw, max_items=items, seed=0, desc=f"{raw.domain} statistics"), "decathlon-stats",
        cache)
    return tuple(mean), tuple(std)


@register_data_source("decathlon", fields=("root", "target"), required={
    "root": "the dataset's root folder (e.g. --set data.root=/path/to/data)",
    "target": "the Visual Decathlon target domain (e.g. --set data.target=dtd)"})
@ranged(seed=SEED, labelled_fraction=Range(0, 1, lo_open=True),
        val_test_fraction=Range(0, 1, lo_open=True, hi_open=True), resize=integer(1),
        crop=integer(1), stats_items=integer(1))
def decathlon(
    root: str | os.PathLike,
    target: str,
    *,
    pool_domains: Sequence[str] | None = None,
    pool_splits: Sequence[str] = ("train", "val"),
    target_unlabelled: bool = True,
    labelled_fraction: float = 1.0,
    val_test_fraction: float = 0.5,
    seed: int = 0,
    splits: SplitsArg = None,
    resize: int = 72,
    crop: int = 64,
    stats_items: int = 5000,
    cache_dir: str | os.PathLike | None = None,
) -> DataBundle:
    """A Visual Decathlon experiment with `target` as the labelled domain.

    * pool: the images (labels dropped) of `pool_splits` of every domain in `pool_domains`
      (default: the nine others), plus, when `target_unlabelled`, the target's unlabelled
      part: its official test images (labels private) and the train images left out of
      the labelled split when `labelled_fraction` < 1. ``in_domain`` marks the target's.
    * target_train / target_val: a stratified, seeded split of `labelled_fraction` of the
      target's train images: `val_test_fraction` of it for model selection (``val_test``),
      the rest for the meta objective and the probe fit (``val_train``).
    * test: the target's official val split (test labels are private).

    Every image is normalised by its own domain's channel statistics, measured on
    `stats_items` of that domain's train images (cached under `cache_dir`). Pool images get
    the training transform, labelled sets the evaluation one.
    """
    if target not in DOMAINS:
        raise ValueError(f"unknown target domain {target!r}; one of {DOMAINS}")
    others = [d for d in DOMAINS if d != target] if pool_domains is None else list(pool_domains)
    if target in others:
        raise ValueError("pool_domains must not contain the target; use target_unlabelled")
    bad = [s for s in pool_splits if s not in SPLITS]
    if bad:
        raise ValueError(f"need pool_splits from {SPLITS}, got {list(pool_splits)}")
    train = DecathlonRaw(root, target, "train")
    test = DecathlonRaw(root, target, "val")
    names = ("val_train", "val_test", "target_unlabelled")
    lab = labelled_fraction
    sizes = {"val_train": lab * (1 - val_test_fraction), "val_test": lab * val_test_fraction,
             "target_unlabelled": None}
    parts, origin = resolve_splits(splits, lambda: stratified_split(train.targets, sizes, seed),
                                   len(train), names, "Visual Decathlon splits")

    stats = {target: domain_stats(train, stats_items, cache_dir)}
    members: list[Dataset] = []
    in_domain: list[np.ndarray] = []

    def add(raw: DecathlonRaw, indices: np.ndarray | None = None) -> None:
        if raw.domain not in stats:
            stats[raw.domain] = domain_stats(DecathlonRaw(root, raw.domain, "train"),
                                             stats_items, cache_dir)
        mean, std = stats[raw.domain]
        view = Transformed(raw, train_transform(resize, crop, mean, std), indices)
        members.append(view)
        in_domain.append(np.full(len(view), raw.domain == target))

    for domain in others:
        for split in pool_splits:
            add(DecathlonRaw(root, domain, split))
    if target_unlabelled:
        if len(parts["target_unlabelled"]):
            add(train, parts["target_unlabelled"])
        add(DecathlonRaw(root, target, "test"))
    if not members:
        raise ValueError("the pool is empty: give pool_domains or set target_unlabelled")
    mean, std = stats[target]
    eval_tf = eval_transform(resize, crop, mean, std)
    return DataBundle(
        name=f"decathlon/{target}",
        pool=Indexed(ConcatDataset(members)),
        target_train=Transformed(train, eval_tf, parts["val_train"]),
        target_val=Transformed(train, eval_tf, parts["val_test"]),
        test=Transformed(test, eval_tf),
        num_classes=train.num_classes,
        image_size=crop,
        mean=mean,
        std=std,
        in_domain=np.concatenate(in_domain),
        splits=parts,
        info={"seed": seed, "splits_from": origin, "target": target, "pool_domains": others,
              "pool_splits": list(pool_splits), "target_unlabelled": target_unlabelled,
              "labelled_fraction": labelled_fraction, "val_test_fraction": val_test_fraction,
              "resize": resize, "crop": crop,
              "domain_stats": {d: {"mean": list(m), "std": list(s)}
                               for d, (m, s) in stats.items()}},
    )
