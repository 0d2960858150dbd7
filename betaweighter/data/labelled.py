"""Labelled classification splits from ImageFolder trees, with one shared label space.

The transfer evaluators read a downstream task as folders: ``train/<class>/*.png``,
``test/<class>/*.png`` and optionally ``val/<class>/*.png``. torchvision's ImageFolder
numbers classes by the sorted folder names *of each root*, so a test folder that lacks one
class silently shifts every later label. Here the class list comes from the training root
and is imposed on the others: a class folder in val/test that train lacks is an error, a
training class without images is an error, and a val/test class without images is counted
in the report. One image file (through a link or a hard link) in two of the splits is an
error, as is a broken image: every image is checked while the splits are built.
Preprocessing follows arXiv:2011.13377: resize of the shorter side and centre crop for
evaluation, random-resized crop and flip for fine-tuning.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset

from betaweighter.data.scan import check_disjoint
from betaweighter.data.sources.folders import FolderRaw
from betaweighter.data.splits import stratified_split
from betaweighter.data.transfer_sets import transfer_raws
from betaweighter.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    finetune_transform,
)
from betaweighter.data.views import Transformed
from betaweighter.errors import DataError

__all__ = ["labelled_folder_splits", "pooled_folders",
           "pooled_transfer", "transfer_splits"]

Path = str | os.PathLike


def labelled_folder_splits(train: Path, test: Path, val: Path | None = None, *,
                           val_fraction: float = 0.2, seed: int = 0, image_size: int = 224,
                           resize: int | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                           std: Sequence[float] = IMAGENET_STD,
                           interpolation: str = "bicubic") -> dict[str, Any]:
    """The labelled splits of a linear probe or fine-tuning run.

    Without `val`, a seeded stratified `val_fraction` of every training class is held out
    (the paper's "random 20 % of train"). Images are resized (shorter side `resize`,
    default `image_size`) and centre-cropped to `image_size`. Returns ``train``, ``val``,
    ``test`` (evaluation transform), ``train_augmented`` and ``trainval_augmented``
    (fine-tuning transform), ``classes`` and ``report`` (image counts, classes without
    val/test images).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    raw_train = FolderRaw(train)
    classes = raw_train.classes
    ev = eval_transform(resize or image_size, image_size, mean, std, interpolation)
    aug = finetune_transform(image_size, mean, std, interpolation)
    raw_test = FolderRaw(test, classes=classes)
    raw_val = None if val is None else FolderRaw(val, classes=classes)
    folders = {"train": raw_train, "test": raw_test}
    if raw_val is not None:
        folders["val"] = raw_val
    _disjoint(folders)
    return _assemble(raw_train, raw_test, raw_val, classes, ev, aug, val_fraction, seed)


def transfer_splits(dataset: str, root: Path, *, val_fraction: float = 0.2, seed: int = 0,
                    image_size: int = 224, resize: int | None = None,
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    interpolation: str = "bicubic") -> dict[str, Any]:
    """`labelled_folder_splits` for one of the paper's datasets read by torchvision
    (`betaweighter.data.transfer_sets`): its official splits, and where it has no
    validation split a seeded stratified `val_fraction` of train. Same keys as
    `labelled_folder_splits`; ``report`` also names the dataset."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    raws, classes = transfer_raws(dataset, root, seed)
    ev = eval_transform(resize or image_size, image_size, mean, std, interpolation)
    aug = finetune_transform(image_size, mean, std, interpolation)
    out = _assemble(raws["train"], raws["test"], raws.get("val"), classes, ev, aug,
                    val_fraction, seed)
    out["report"]["dataset"] = dataset
    return out


def pooled_transfer(dataset: str, root: Path, splits: Sequence[str], *, seed: int = 0,
                    image_size: int = 224, resize: int | None = None,
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    interpolation: str = "bicubic") -> tuple[Any, list[str]]:
    """`pooled_folders` for a torchvision-read dataset: the union of its official
    `splits` (``val`` is skipped where the dataset has none), as the paper's few-shot
    pool."""
    raws, classes = transfer_raws(dataset, root, seed)
    ev = eval_transform(resize or image_size, image_size, mean, std, interpolation)
    parts = [Transformed(raws[s], ev) for s in dict.fromkeys(splits) if s in raws]
    if not parts:
        raise DataError(f"{dataset} has none of the splits {list(splits)}; it has "
                        f"{sorted(raws)}")
    if len(parts) == 1:
        return parts[0], classes
    pooled: Any = ConcatDataset(parts)  # Any: it gets a `targets` attribute
    pooled.targets = np.concatenate([p.targets for p in parts])
    return pooled, classes


def _assemble(raw_train: Any, raw_test: Any, raw_val: Any | None, classes: list[str],
              ev: Any, aug: Any, val_fraction: float, seed: int) -> dict[str, Any]:
    """The evaluation and fine-tuning views of train/val/test (val: a stratified
    `val_fraction` of train when `raw_val` is None) and their report."""
    splits: dict[str, Any]
    if raw_val is None:
        parts = stratified_split(raw_train.targets, {"val": val_fraction, "train": None}, seed)
        splits = {"train": Transformed(raw_train, ev, parts["train"]),
                  "val": Transformed(raw_train, ev, parts["val"]),
                  "train_augmented": Transformed(raw_train, aug, parts["train"]),
                  "trainval_augmented": Transformed(raw_train, aug)}
    else:
        splits = {"train": Transformed(raw_train, ev), "val": Transformed(raw_val, ev),
                  "train_augmented": Transformed(raw_train, aug),
                  "trainval_augmented": ConcatDataset([Transformed(raw_train, aug),
                                                       Transformed(raw_val, aug)])}
    splits["test"] = Transformed(raw_test, ev)
    report: dict[str, Any] = {"classes": len(classes), "val_from_train": raw_val is None}
    for name in ("train", "val", "test"):
        labels = np.asarray(splits[name].targets)
        report[f"{name}_images"] = int(labels.size)
        if labels.size == 0:
            raise DataError(f"the {name} split has no images; check data.{name} (or "
                            "data.val_fraction)")
        present = set(labels.tolist())
        missing = [c for k, c in enumerate(classes) if k not in present]
        if missing and name != "train":
            report[f"{name}_classes_without_images"] = missing
    return {**splits, "classes": classes, "report": report}


def pooled_folders(roots: Sequence[Path], *, image_size: int = 224, resize: int | None = None,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   interpolation: str = "bicubic") -> tuple[Any, list[str]]:
    """One dataset over several roots (the few-shot pool: the paper uses all splits of a
    dataset), labelled by the sorted union of their class folders."""
    unique = list(dict.fromkeys(str(r) for r in roots))
    classes = sorted({c for r in unique for c in FolderRaw(r, check=False).classes})
    ev = eval_transform(resize or image_size, image_size, mean, std, interpolation)
    raws = {r: FolderRaw(r, classes=classes) for r in unique}
    _disjoint(raws)  # one image twice could be its own query in an episode
    parts = [Transformed(raw, ev) for raw in raws.values()]
    if len(parts) == 1:
        return parts[0], classes
    pooled: Any = ConcatDataset(parts)  # Any: it gets a `targets` attribute
    pooled.targets = np.concatenate([p.targets for p in parts])  # labels without decoding
    return pooled, classes


def _disjoint(raws: dict[str, FolderRaw]) -> None:
    """Refuse an image file that is in two of the folders `raws`."""
    check_disjoint({k: [str(p) for p in r.files] for k, r in raws.items()},
                   {k: r.ids for k, r in raws.items()}, what="folders")
