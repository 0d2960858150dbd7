"""Labelled classification splits from ``ImageFolder`` roots, with one shared label space.

torchvision's ``ImageFolder`` numbers classes by the sorted folder names *of each root*, so
a test folder that lacks one class folder silently shifts every later label. Here the class
list comes from the training root and is imposed on the other roots; a class folder in
val/test that train lacks is an error, a training class without images is an error, and a
val/test class without images is counted in the report. Preprocessing follows
arXiv:2011.13377: bicubic resize of the shorter side and centre crop for evaluation,
random-resized crop and horizontal flip for fine-tuning.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Subset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_transform(image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> T.Compose:
    """Resize the shorter side to `image_size` (bicubic), centre crop, normalise."""
    return T.Compose([T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(image_size), T.ToTensor(), T.Normalize(mean, std)])


def train_transform(image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> T.Compose:
    """Random-resized crop (bicubic) and horizontal flip, then normalise."""
    return T.Compose([T.RandomResizedCrop(image_size,
                                          interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


class SplitFolder(ImageFolder):
    """An ``ImageFolder`` whose label space is a given class list (the training split's):
    folder ``root/<classes[k]>`` has label k, and a missing or empty folder is allowed."""

    def __init__(self, root: str | Path, classes: Sequence[str], transform: Any = None) -> None:
        self._fixed_classes = list(classes)
        super().__init__(str(root), transform=transform, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._fixed_classes, {c: i for i, c in enumerate(self._fixed_classes)}


def class_folders(root: str | Path, key: str) -> list[str]:
    """Sorted class-folder names under `root`; errors name the config `key`."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{key}: image folder {root} does not exist; it must contain one "
                         "sub-folder of images per class")
    try:
        return find_classes(str(root))[0]
    except FileNotFoundError as err:
        raise ValueError(f"{key}: {root} has no class sub-folders ({err})") from err


def image_folder_splits(train: str | Path, test: str | Path, val: str | Path | None = None,
                        *, val_fraction: float = 0.2, seed: int = 0, image_size: int = 224,
                        mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD) -> dict[str, Any]:
    """The labelled splits of a linear probe or fine-tuning run.

    Without `val`, a seeded stratified `val_fraction` of every training class is held out
    (the paper's "random 20 % of train"). Returns ``train``, ``val``, ``test`` (evaluation
    transform), ``train_augmented`` and ``trainval_augmented`` (fine-tuning transform),
    ``classes`` and ``report`` (image counts, classes without val/test images).
    """
    classes = class_folders(train, "data.train")
    roots = {"train": Path(train), "test": Path(test)}
    if val is not None:
        roots["val"] = Path(val)
    for name, root in roots.items():
        extra = sorted(set(class_folders(root, f"data.{name}")) - set(classes))
        if extra:
            raise ValueError(f"data.{name}: class folders {extra} in {root} do not exist in "
                             f"the training folder {train}; add them there or remove them")
    ev, tr = eval_transform(image_size, mean, std), train_transform(image_size, mean, std)
    folders = {n: SplitFolder(r, classes, ev) for n, r in roots.items()}
    counts = Counter(folders["train"].targets)
    empty = [c for k, c in enumerate(classes) if counts[k] == 0]
    if empty:
        raise ValueError(f"data.train: classes {empty} have no images in {train}; add images "
                         "or remove those folders")
    train_aug = SplitFolder(train, classes, tr)
    if val is None:
        tr_idx, va_idx = stratified_split(np.asarray(folders["train"].targets), val_fraction,
                                          seed)
        splits = {"train": Subset(folders["train"], tr_idx),
                  "val": Subset(SplitFolder(train, classes, ev), va_idx),
                  "train_augmented": Subset(train_aug, tr_idx), "trainval_augmented": train_aug}
    else:
        splits = {"train": folders["train"], "val": folders["val"], "train_augmented": train_aug,
                  "trainval_augmented": ConcatDataset([train_aug, SplitFolder(val, classes, tr)])}
    splits["test"] = folders["test"]
    report = {"classes": len(classes), "val_from_train": val is None}
    for name in ("train", "val", "test"):
        labels = _labels(splits[name])
        report[f"{name}_images"] = int(labels.size)
        if labels.size == 0:
            raise ValueError(f"the {name} split has no images; check data.{name} "
                             "(or data.val_fraction)")
        present = set(labels.tolist())
        missing = [c for k, c in enumerate(classes) if k not in present]
        if missing and name != "train":
            report[f"{name}_classes_without_images"] = missing
    return {**splits, "classes": classes, "report": report}


def pooled_folders(roots: Sequence[str | Path], *, image_size: int = 224,
                   mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> tuple[Any, list[str]]:
    """One dataset over several roots (the few-shot pool: the paper uses all splits of a
    dataset), labelled by the sorted union of their class folders."""
    unique = list(dict.fromkeys(Path(r) for r in roots))
    classes = sorted({c for r in unique for c in class_folders(r, "data")})
    ev = eval_transform(image_size, mean, std)
    parts = [SplitFolder(r, classes, ev) for r in unique]
    return (parts[0] if len(parts) == 1 else ConcatDataset(parts)), classes


def stratified_split(labels: np.ndarray, fraction: float,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) indices: a seeded `fraction` of each class (rounded, at least one
    item when the class has two or more, never the whole class) is held out."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = min(max(int(round(fraction * idx.size)), 1), idx.size - 1)
        held.append(idx[:n])
    held_out = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(labels.size), held_out), held_out


def _labels(dataset: Any) -> np.ndarray:
    if isinstance(dataset, Subset):
        return _labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    return np.asarray(dataset.targets, dtype=np.int64)
