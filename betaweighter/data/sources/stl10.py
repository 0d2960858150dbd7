"""STL-10 (Coates, Ng and Lee, AISTATS 2011) from its official binary files.

Layout under ``root`` (what ``torchvision.datasets.STL10(root, download=True)`` creates)::

    root/stl10_binary/{unlabeled_X, train_X, train_y, test_X, test_y}.bin

``*_X.bin`` holds uint8 images of 3x96x96, each stored channel by channel in column-major
order; ``*_y.bin`` holds one uint8 label per image, from 1 to 10. The files are read
through a memory map (the 2.7 GB unlabelled split is never loaded whole), which is opened
lazily in each process, so the datasets work with DataLoader workers under fork or spawn.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from betaweighter.data.bundle import DataBundle
from betaweighter.data.cache import memoize_json
from betaweighter.data.indexed import Indexed
from betaweighter.data.options import SEED, integer, ranged
from betaweighter.data.sources import register_data_source
from betaweighter.data.splits import SplitsArg, resolve_splits, stratified_split
from betaweighter.data.transforms import channel_stats, eval_transform, train_transform
from betaweighter.data.views import Transformed
from betaweighter.errors import CorruptDatasetError, DatasetNotFoundError

__all__ = ["HOW_TO_GET", "IMAGE_BYTES", "IMAGE_SHAPE", "NUM_CLASSES", "OFFICIAL_SIZES",
           "PAPER_MEAN", "PAPER_STD", "binary_dir", "download_stl10", "stl10", "STL10Raw"]

IMAGE_SHAPE = (3, 96, 96)
IMAGE_BYTES = 3 * 96 * 96
OFFICIAL_SIZES = {"unlabeled": 100_000, "train": 5_000, "test": 8_000}
NUM_CLASSES = 10
#: The normalisation of the reference code, for exact reproduction (`stl10(mean=..., std=...)`).
PAPER_MEAN = (0.441, 0.427, 0.386)
PAPER_STD = (0.25, 0.243, 0.251)

HOW_TO_GET = (
    "Download it with betaweighter.data.stl10(root, download=True) (or the command-line flag "
    "--download), or fetch http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz and "
    "extract it so that ROOT/stl10_binary/ holds the .bin files."
)


def binary_dir(root: str | os.PathLike) -> Path:
    """``root/stl10_binary``, or `root` itself when it already is that folder."""
    root = Path(root).expanduser()
    return root if root.name == "stl10_binary" else root / "stl10_binary"


class STL10Raw(Dataset):
    """One split (``"unlabeled"``, ``"train"`` or ``"test"``) of the STL-10 binaries.

    Yields ``(uint8 tensor (3, 96, 96), label)`` with labels 0..9, or -1 for the unlabelled
    split. ``targets`` is the label array (None for ``"unlabeled"``). Sizes and labels are
    checked on construction: a truncated or corrupt file raises `CorruptDatasetError`.
    """

    def __init__(self, root: str | os.PathLike, split: str) -> None:
        if split not in OFFICIAL_SIZES:
            raise ValueError(f"split must be one of {sorted(OFFICIAL_SIZES)}, got {split!r}")
        self.split = split
        folder = binary_dir(root)
        self.images_path = folder / f"{split}_X.bin"
        if not self.images_path.is_file():
            raise DatasetNotFoundError("STL-10", self.images_path, HOW_TO_GET.replace(
                "ROOT", str(folder.parent)))
        size = self.images_path.stat().st_size
        if size == 0 or size % IMAGE_BYTES:
            raise CorruptDatasetError(
                self.images_path,
                f"{size} bytes is not a whole number of 3x96x96 uint8 images "
                f"({IMAGE_BYTES} bytes each): the file is truncated or is not STL-10",
                "Delete it and download STL-10 again (download=True / --download).",
            )
        self.num_images = size // IMAGE_BYTES
        self.targets = None if split == "unlabeled" else self._read_labels(folder)
        if self.num_images != OFFICIAL_SIZES[split]:
            warnings.warn(
                f"{self.images_path} holds {self.num_images} images; the official STL-10 "
                f"{split} split has {OFFICIAL_SIZES[split]}. A partial copy?",
                stacklevel=2,
            )
        self._images: np.ndarray | None = None

    def _read_labels(self, folder: Path) -> np.ndarray:
        path = folder / f"{self.split}_y.bin"
        if not path.is_file():
            raise DatasetNotFoundError("STL-10 labels", path, HOW_TO_GET.replace(
                "ROOT", str(folder.parent)))
        raw = np.fromfile(path, dtype=np.uint8)
        if len(raw) != self.num_images:
            raise CorruptDatasetError(
                path, f"{len(raw)} labels for {self.num_images} images in "
                f"{self.images_path.name}: one of the two files is truncated",
                "Download STL-10 again (download=True / --download).")
        if raw.size and (raw.min() < 1 or raw.max() > NUM_CLASSES):
            raise CorruptDatasetError(
                path, f"labels must lie in 1..{NUM_CLASSES}, found {raw.min()}..{raw.max()}")
        return raw.astype(np.int64) - 1

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if not -self.num_images <= i < self.num_images:
            raise IndexError(f"index {i} out of range for {self.num_images} images")
        if self._images is None:
            self._images = np.memmap(self.images_path, dtype=np.uint8, mode="r",
                                     shape=(self.num_images, *IMAGE_SHAPE))
        # Stored column-major: swap H and W to get the upright image (as torchvision does).
        image = torch.from_numpy(np.ascontiguousarray(self._images[i].transpose(0, 2, 1)))
        return image, -1 if self.targets is None else int(self.targets[i])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_images"] = None  # each worker maps the file itself
        return state


def download_stl10(root: str | os.PathLike) -> None:
    """Fetch and extract STL-10 into ``root/stl10_binary`` with torchvision (2.6 GB)."""
    import torchvision

    torchvision.datasets.STL10(str(Path(root).expanduser()), split="test", download=True)


def _pool_stats(unlabeled: STL10Raw, items: int,
                cache: str | os.PathLike | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    stat = unlabeled.images_path.stat()
    key = {"file": str(unlabeled.images_path.resolve()), "size": stat.st_size,
           "mtime": stat.st_mtime_ns, "items": items}
    mean, std = memoize_json(key, lambda: channel_stats(
        unlabeled, max_items=items, seed=0, desc="STL-10 statistics"), "stl10-stats", cache)
    return tuple(mean), tuple(std)


@register_data_source("stl10", fields=("root", "download"), required={
    "root": "the dataset's root folder (e.g. --set data.root=/path/to/data)"})
@ranged(seed=SEED, val_train_per_class=integer(1), val_test_per_class=integer(1),
        resize=integer(1), crop=integer(1), stats_items=integer(1))
def stl10(
    root: str | os.PathLike,
    *,
    val_train_per_class: int = 250,
    val_test_per_class: int = 250,
    seed: int = 0,
    splits: SplitsArg = None,
    resize: int = 96,
    crop: int = 84,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    stats_items: int = 5000,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> DataBundle:
    """The STL-10 experiment of the paper.

    * pool: the 100,000 ``unlabeled`` images, with training augmentation (resize `resize`,
      random crop `crop`, horizontal flip);
    * target_train / target_val: a stratified split, seeded by `seed`, of the 5,000 labelled
      ``train`` images into ``val_train`` (meta objective, linear-probe fit) and ``val_test``
      (model selection): `val_train_per_class` + `val_test_per_class` of the 500 per class;
    * test: the official 8,000 ``test`` images.

    Labelled sets use the evaluation transform (centre crop, no flip). `mean`/`std` default
    to statistics measured on `stats_items` pool images, the same for every `seed` and
    cached under `cache_dir` (`PAPER_MEAN`/`PAPER_STD` are the reference code's constants).
    `splits` reuses the splits of an earlier run (a dict, or the file
    `DataBundle.save_splits` wrote). Nothing is downloaded unless `download`.
    """
    if download and not all((binary_dir(root) / f"{s}_X.bin").is_file() for s in OFFICIAL_SIZES):
        download_stl10(root)
    unlabeled = STL10Raw(root, "unlabeled")
    train = STL10Raw(root, "train")
    test = STL10Raw(root, "test")
    names = ("val_train", "val_test")
    parts, origin = resolve_splits(
        splits, lambda: stratified_split(train.targets, {"val_train": val_train_per_class,
                                                        "val_test": val_test_per_class}, seed),
        len(train), names, "STL-10 splits")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither (then they are measured)")
    if mean is None:
        mean, std = _pool_stats(unlabeled, stats_items, cache_dir)
    assert mean is not None and std is not None  # both given, or both measured
    train_tf = train_transform(resize, crop, mean, std)
    eval_tf = eval_transform(resize, crop, mean, std)
    return DataBundle(
        name="stl10",
        pool=Indexed(Transformed(unlabeled, train_tf)),
        target_train=Transformed(train, eval_tf, parts["val_train"]),
        target_val=Transformed(train, eval_tf, parts["val_test"]),
        test=Transformed(test, eval_tf),
        num_classes=NUM_CLASSES,
        image_size=crop,
        mean=tuple(mean),
        std=tuple(std),
        splits=parts,
        info={"seed": seed, "splits_from": origin, "val_train_per_class": val_train_per_class,
              "val_test_per_class": val_test_per_class, "resize": resize, "crop": crop,
              "mean": list(mean), "std": list(std)},
    )
