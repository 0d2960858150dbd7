"""Bring your own data: image folders as the pool and as the labelled target.

The target uses the ``torchvision.datasets.ImageFolder`` layout (one sub-folder per class);
the pool may use it too, or be any tree of image files (labels are never read from it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import find_classes, make_dataset

from betaweighter.data.bundle import DataBundle
from betaweighter.data.errors import DatasetNotFoundError
from betaweighter.data.images import IMAGE_EXTENSIONS, read_image
from betaweighter.data.indexed import Indexed
from betaweighter.data.splits import SplitsArg, resolve_splits, stratified_split
from betaweighter.data.transforms import channel_stats, eval_transform, train_transform
from betaweighter.data.views import Transformed

HOW = "Point it at a folder of images (for a labelled set: one sub-folder per class)."


class FolderRaw(Dataset):
    """Images under `root`: yields ``(uint8 tensor (3, H, W), label)``.

    ``labelled=True`` reads the ImageFolder layout (``classes``, ``targets`` as torchvision
    defines them); ``labelled=False`` takes every image file in the tree, sorted by path,
    with label -1.
    """

    def __init__(self, root: str | os.PathLike, labelled: bool = True) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetNotFoundError("image folder", self.root, HOW)
        if labelled:
            try:
                self.classes, class_to_idx = find_classes(str(self.root))
                samples = make_dataset(str(self.root), class_to_idx, IMAGE_EXTENSIONS)
            except FileNotFoundError as err:  # no class folders, or an empty one
                raise DatasetNotFoundError("labelled images", self.root / "<class>" / "*.jpg",
                                           f"{HOW} ({err})") from err
            self.files = [Path(p) for p, _ in samples]
            self.targets: np.ndarray | None = np.asarray([c for _, c in samples], np.int64)
        else:
            self.classes = []
            self.files = sorted(p for p in self.root.rglob("*")
                                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            self.targets = None
        if not self.files:
            raise DatasetNotFoundError("images", self.root / "*" / "*.jpg", HOW)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        label = -1 if self.targets is None else int(self.targets[i])
        return read_image(self.files[i]), label


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
) -> DataBundle:
    """Pool from `pool_root` (any tree of images), labelled target from `target_root`
    (ImageFolder layout), test from `test_root` (same classes) or, when it is None, a
    stratified `test_fraction` of the target. The rest of the target is split into
    ``val_train`` and ``val_test`` (`val_test_fraction` of it). Defaults resize 96 / crop 84
    are the paper's STL-10 ones; `mean`/`std` default to the pool's measured statistics.
    """
    pool = FolderRaw(pool_root, labelled=False)
    target = FolderRaw(target_root, labelled=True)
    if not 0 < val_test_fraction < 1 or not 0 <= test_fraction < 1:
        raise ValueError("need 0 < val_test_fraction < 1 and 0 <= test_fraction < 1")
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
    eval_tf = eval_transform(resize, crop, mean, std)
    if test_root is None:
        test: Dataset = Transformed(target, eval_tf, parts["test"])
    else:
        test_raw = FolderRaw(test_root, labelled=True)
        if test_raw.classes != target.classes:
            raise ValueError(f"{test_root} has classes {test_raw.classes[:5]}..., but "
                             f"{target_root} has {target.classes[:5]}...: they must match")
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
        splits=parts,
        info={"seed": seed, "splits_from": origin, "pool_root": str(pool_root),
              "target_root": str(target_root),
              "test_root": None if test_root is None else str(test_root),
              "resize": resize, "crop": crop, "mean": list(mean), "std": list(std)},
    )
