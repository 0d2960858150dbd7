"""Bring your own data: image folders as the pool and as the labelled target.

The target uses the ``torchvision.datasets.ImageFolder`` layout (one sub-folder per class);
the pool may use it too, or be any tree of image files (labels are never read from it).
Symbolic links are followed, each real file once (`betaweighter.data.scan`); a link that
loops, an image in two classes, or a test image that is also a target image is refused.
Labelled images are checked while the splits are built (`check_image`), so a broken file
stops the run before training. A CSV file of the pool's domains (`read_domains`) gives
``bundle.in_domain`` and per-kind diagnostics.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from betaweighter.data.bundle import DataBundle
from betaweighter.data.domains import read_domains
from betaweighter.data.images import IMAGE_EXTENSIONS, check_image, read_image
from betaweighter.data.indexed import Indexed
from betaweighter.data.options import SEED, Range, integer, ranged
from betaweighter.data.scan import FileId, check_disjoint, scan_images
from betaweighter.data.sources import register_data_source
from betaweighter.data.splits import SplitsArg, resolve_splits, stratified_split
from betaweighter.data.transforms import channel_stats, eval_transform, train_transform
from betaweighter.data.views import Transformed
from betaweighter.errors import DataError, DatasetNotFoundError
from betaweighter.runtime import progress_disabled

__all__ = ["FolderRaw", "image_folders"]

HOW = "Point it at a folder of images (for a labelled set: one sub-folder per class)."


class FolderRaw(Dataset):
    """Images under `root`: yields ``(uint8 tensor (3, H, W), label)``.

    ``labelled=True`` reads the ImageFolder layout: one sub-folder per class, labels by the
    sorted folder names, or, with `classes`, by that list (folder ``root/<classes[k]>`` has
    label k; a class without a folder or images is allowed, a folder outside the list is
    an error). ``labelled=False`` takes every image file in the tree, sorted by path, with
    label -1. Links are followed, each real file once (`ids` holds each file's identity);
    an image reachable from two class folders is refused. Labelled images are checked
    (`check_image`) when the dataset is made, unless ``check=False``; a file that cannot
    be decoded raises `CorruptDatasetError` naming it.
    """

    files: list[Path]
    ids: list[FileId]
    targets: np.ndarray | None

    def __init__(self, root: str | os.PathLike, labelled: bool = True,
                 classes: Sequence[str] | None = None, check: bool = True) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetNotFoundError("image folder", self.root, HOW)
        if labelled:
            found = _class_folders(self.root)
            if classes is None:
                if not found:
                    raise DataError(f"{self.root} has no class sub-folders. {HOW}")
                self.classes = found
            else:
                self.classes = list(classes)
                extra = sorted(set(found) - set(self.classes))
                if extra:
                    raise DataError(f"{self.root}: class folders {extra} are not among the "
                                    f"{len(self.classes)} classes of the training split; "
                                    "add them there or remove them")
            self.files, self.ids, self.targets = _labelled_files(self.root, self.classes)
            if classes is None:
                empty = [c for k, c in enumerate(self.classes) if not (self.targets == k).any()]
                if empty:
                    raise DataError(f"{self.root}: class folders {empty} hold no images; add "
                                    "images or remove those folders")
        else:
            self.classes = []
            scanned = scan_images(self.root, IMAGE_EXTENSIONS)
            self.files = [Path(p) for p, _ in scanned]
            self.ids = [ident for _, ident in scanned]
            self.targets = None
        if not self.files and classes is None:
            raise DatasetNotFoundError("images", self.root / "*" / "*.jpg", HOW)
        if labelled and check:
            for path in tqdm(self.files, desc=f"checking {self.root.name}",
                             disable=progress_disabled(), leave=False):
                check_image(path)

    def __len__(self) -> int:
        return len(self.files)

    def fingerprint(self) -> str:
        """A digest of the file list, sizes and labels (for feature caches)."""
        h = hashlib.sha256(str(self.root.resolve()).encode())
        labels = self.targets if self.targets is not None else [-1] * len(self.files)
        for path, label in zip(self.files, labels):
            h.update(f"{path}\0{path.stat().st_size}\0{int(label)}\n".encode())
        return h.hexdigest()

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        label = -1 if self.targets is None else int(self.targets[i])
        return read_image(self.files[i]), label


@register_data_source("folders", fields=("pool_root", "target_root"), required={
    "pool_root": "the unlabelled pool's folder of images",
    "target_root": "the labelled target's ImageFolder tree (one sub-folder per class)"})
@ranged(seed=SEED, val_test_fraction=Range(0, 1, lo_open=True, hi_open=True),
        test_fraction=Range(0, 1, hi_open=True), resize=integer(1), crop=integer(1),
        stats_items=integer(1))
def image_folders(
    pool_root: str | os.PathLike,
    target_root: str | os.PathLike,
    *,
    test_root: str | os.PathLike | None = None,
    val_test_fraction: float = 0.5,
    test_fraction: float = 0.3,
    seed: int = 0,
    splits: SplitsArg = None,
    resize: int = 96,
    crop: int = 84,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    stats_items: int = 5000,
    domains: str | os.PathLike | None = None,
) -> DataBundle:
    """Pool from `pool_root` (any tree of images), labelled target from `target_root`
    (ImageFolder layout), test from `test_root` (same classes) or, when it is None, a
    stratified `test_fraction` of the target. The rest of the target is split into
    ``val_train`` and ``val_test`` (`val_test_fraction` of it). Defaults resize 96 / crop 84
    are the paper's STL-10 ones; `mean`/`std` default to the pool's measured statistics.

    `domains` is a CSV file (``path,in_domain[,kind]``, see `betaweighter.data.domains`)
    that lists every pool image, with its path relative to `pool_root` (or absolute); it
    sets ``bundle.in_domain`` and ``bundle.info["kinds"]`` (one kind name per pool image)
    so a run reports the AUROC of its weights and the in-domain share of what it pruned,
    overall and per kind. A relative `domains` path is taken from the current working
    directory (the config loader does not resolve ``data.options``). An image of
    `test_root` that is also one of `target_root` (a copy through a link) is refused.
    """
    pool = FolderRaw(pool_root, labelled=False)
    in_domain, kinds = None, None
    if domains is not None:
        in_domain, kinds = read_domains(Path(domains).expanduser().absolute(), pool.root,
                                        pool.files, pool.ids)
    target = FolderRaw(target_root, labelled=True)
    test_raw = None if test_root is None else _test_folder(test_root, target, target_root)
    names = ("val_train", "val_test") + (("test",) if test_root is None else ())
    held = test_fraction if test_root is None else 0.0
    sizes: dict[str, float | None] = {"test": held} if test_root is None else {}
    sizes.update({"val_train": (1.0 - held) * (1 - val_test_fraction), "val_test": None})
    parts, origin = resolve_splits(splits, lambda: stratified_split(target.targets, sizes, seed),
                                   len(target), names, "image-folder splits")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither (then they are measured)")
    if mean is None:
        mean, std = channel_stats(pool, max_items=stats_items, seed=0, desc="pool statistics")
    assert mean is not None and std is not None  # both given, or both measured
    eval_tf = eval_transform(resize, crop, mean, std)
    if test_raw is None:
        test: Dataset = Transformed(target, eval_tf, parts["test"])
    else:
        test = Transformed(test_raw, eval_tf)
    return DataBundle(
        name=f"folders/{Path(target_root).name}",
        pool=Indexed(Transformed(pool, train_transform(resize, crop, mean, std))),
        target_train=Transformed(target, eval_tf, parts["val_train"]),
        target_val=Transformed(target, eval_tf, parts["val_test"]),
        test=test,
        num_classes=len(target.classes),
        image_size=crop,
        mean=tuple(mean),
        std=tuple(std),
        in_domain=in_domain,
        splits=parts,
        info={"seed": seed, "splits_from": origin, "pool_root": str(pool_root),
              "target_root": str(target_root),
              "test_root": None if test_root is None else str(test_root),
              "resize": resize, "crop": crop, "mean": list(mean), "std": list(std),
              **({} if domains is None else
                 {"domains": str(Path(domains).expanduser().absolute()), "kinds": kinds})},
    )


def _test_folder(test_root: str | os.PathLike, target: FolderRaw,
                 target_root: str | os.PathLike) -> FolderRaw:
    """The test folder: the target's classes, and none of the target's images."""
    test_raw = FolderRaw(test_root, labelled=True)
    if test_raw.classes != target.classes:
        raise ValueError(f"{test_root} has classes {test_raw.classes[:5]}..., but "
                         f"{target_root} has {target.classes[:5]}...: they must match")
    check_disjoint({"target": [str(p) for p in target.files],
                    "test": [str(p) for p in test_raw.files]},
                   {"target": target.ids, "test": test_raw.ids}, what="folders")
    return test_raw


def _labelled_files(root: Path, classes: list[str]
                    ) -> tuple[list[Path], list[FileId], np.ndarray]:
    """(files, identities, labels) of the class folders ``root/<classes[k]>`` (label k),
    in torchvision's ImageFolder order (class, then folder path, then file name); a class
    without a folder has no images. One file under two classes is a `DataError`."""
    per_class: dict[str, list[tuple[str, FileId]]] = {}
    for name in sorted(classes):  # the order torchvision's make_dataset walks them in
        folder = root / name
        if folder.is_dir():
            per_class[name] = scan_images(folder, IMAGE_EXTENSIONS, order=lambda d, n: (d, n))
    check_disjoint({c: [p for p, _ in found] for c, found in per_class.items()},
                   {c: [i for _, i in found] for c, found in per_class.items()},
                   what=f"class folders of {root}")
    label = {c: k for k, c in enumerate(classes)}
    rows = [(Path(p), ident, label[c]) for c, found in per_class.items() for p, ident in found]
    return ([r[0] for r in rows], [r[1] for r in rows],
            np.asarray([r[2] for r in rows], np.int64))


def _class_folders(root: Path) -> list[str]:
    """Sorted names of the sub-folders of `root` (hidden ones skipped)."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
