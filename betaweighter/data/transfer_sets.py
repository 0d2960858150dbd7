"""The transfer datasets of arXiv:2011.13377 read through torchvision's dataset classes.

*How Well Do Self-Supervised Models Transfer?* (Ericsson, Gouk and Hospedales) evaluates on
FGVC Aircraft, Caltech101, Stanford Cars, CIFAR-10/100, DTD, Flowers102, Food-101,
Oxford-IIIT Pets and SUN397. torchvision reads each of them from its published layout;
here each is opened with ``download=False`` (nothing is ever fetched) and with the official
splits:

========================  =======================================================
dataset                   splits (train / val / test)
========================  =======================================================
FGVCAircraft              official train / val / test (variant level, 100 classes)
Caltech101                no official split: a seeded 30 images per class train,
                          the rest test (Kornblith et al.'s protocol)
StanfordCars              devkit train / test
CIFAR10, CIFAR100         the train / test batches
DTD                       partition 1: train1 / val1 / test1
Flowers102                official trnid / valid / tstid
Food101                   meta train / test
OxfordIIITPet             official trainval (as train) / test
SUN397                    ``Partitions/Training_01.txt`` / ``Testing_01.txt`` under
                          the root (torchvision reads no split; these files come
                          with the dataset's ``Partitions.zip``)
========================  =======================================================

Where there is no official validation split, the evaluators hold out a seeded stratified
fraction of train (`betaweighter.data.labelled.transfer_splits`). VOC2007 classification is
multi-label (11-point mAP over 20 binary problems) and does not fit the multi-class probe,
so it is not offered here.

torchvision checks CIFAR's and Flowers102's files against their MD5 sums on every load;
here the files must exist, and a file that cannot be unpickled or decoded is an error,
so a copy re-packed elsewhere (or a test's tiny tree) still loads.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torchvision.datasets as tvd
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from betaweighter.data.splits import stratified_split
from betaweighter.data.transforms import as_uint8_chw
from betaweighter.errors import CorruptDatasetError, DataError, DatasetNotFoundError

__all__ = ["TRANSFER_DATASETS", "TransferRaw", "transfer_raws"]


class _CIFAR10(tvd.CIFAR10):
    """CIFAR-10 whose files must exist (their MD5 sums are not recomputed)."""

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        if not path.is_file():
            raise RuntimeError(f"{path} is missing")
        with open(path, "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class _CIFAR100(_CIFAR10, tvd.CIFAR100):
    base_folder, train_list, test_list, meta = (tvd.CIFAR100.base_folder, tvd.CIFAR100.train_list,
                                                tvd.CIFAR100.test_list, tvd.CIFAR100.meta)


class _Flowers102(tvd.Flowers102):
    """Flowers102 whose label files must exist (their MD5 sums are not recomputed)."""

    def _check_integrity(self) -> bool:
        return self._images_folder.is_dir() and all(
            (self._base_folder / name).is_file() for name, _ in
            (self._file_dict["label"], self._file_dict["setid"]))


@dataclass(frozen=True)
class _Spec:
    make: Callable[..., Any]          # (root, split) -> torchvision dataset
    splits: tuple[str, ...]           # the official splits this reader offers
    folder: str                       # what torchvision expects under the root


def _split_kw(key: str, names: dict[str, str] | None = None, **fixed: Any) -> Callable:
    def make(cls: type) -> Callable[..., Any]:
        return lambda root, split: cls(root, download=False, **fixed,
                                       **{key: (names or {}).get(split, split)})
    return make


TRANSFER_DATASETS: dict[str, _Spec] = {
    "FGVCAircraft": _Spec(_split_kw("split", annotation_level="variant")(tvd.FGVCAircraft),
                          ("train", "val", "test"), "fgvc-aircraft-2013b"),
    "Caltech101": _Spec(lambda root, split: tvd.Caltech101(root, "category", download=False),
                        ("train", "test"), "caltech101/101_ObjectCategories"),
    "StanfordCars": _Spec(_split_kw("split")(tvd.StanfordCars), ("train", "test"),
                          "stanford_cars"),
    "CIFAR10": _Spec(lambda root, split: _CIFAR10(root, train=split == "train"),
                     ("train", "test"), _CIFAR10.base_folder),
    "CIFAR100": _Spec(lambda root, split: _CIFAR100(root, train=split == "train"),
                      ("train", "test"), _CIFAR100.base_folder),
    "DTD": _Spec(_split_kw("split", partition=1)(tvd.DTD), ("train", "val", "test"), "dtd/dtd"),
    "Flowers102": _Spec(_split_kw("split")(_Flowers102), ("train", "val", "test"), "flowers-102"),
    "Food101": _Spec(_split_kw("split")(tvd.Food101), ("train", "test"), "food-101"),
    "OxfordIIITPet": _Spec(_split_kw("split", {"train": "trainval"})(tvd.OxfordIIITPet),
                           ("train", "test"), "oxford-iiit-pet"),
    "SUN397": _Spec(lambda root, split: tvd.SUN397(root, download=False), ("train", "test"),
                    "SUN397"),
}


class TransferRaw(Dataset):
    """One split of a torchvision dataset: yields ``(uint8 tensor (3, H, W), label)``, with
    ``targets`` read from the dataset's index (no image is decoded for them) and a
    ``fingerprint`` for feature caches."""

    def __init__(self, dataset: Any, name: str, split: str, classes: list[str],
                 indices: np.ndarray | None = None) -> None:
        self.dataset, self.name, self.split, self.classes = dataset, name, split, classes
        labels = _labels(dataset, name)
        self.indices = (np.arange(len(labels), dtype=np.int64) if indices is None
                        else np.asarray(indices, dtype=np.int64))
        self.targets = labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        k = int(self.indices[i])
        try:
            image = self.dataset[k][0]
        except (OSError, SyntaxError, ValueError) as e:  # what Pillow raises for a bad file
            raise CorruptDatasetError(f"{self.name} {self.split} item {k}",
                                      f"cannot be decoded ({e})",
                                      "Replace the file or fetch the dataset again") from None
        if isinstance(image, Image.Image):
            image = image.convert("RGB")
        return as_uint8_chw(image), int(self.targets[i])

    def fingerprint(self) -> str:
        """A digest of the dataset, split, file list (or pixels) and labels."""
        h = hashlib.sha256(f"{self.name}\0{self.split}\0{self.dataset.root}".encode())
        files = next((getattr(self.dataset, a) for a in ("_image_files", "_images", "_samples")
                      if hasattr(self.dataset, a)), None)
        if files is not None:
            h.update("\n".join(str(files[k]) for k in self.indices).encode())
        elif hasattr(self.dataset, "data"):
            h.update(np.ascontiguousarray(np.asarray(self.dataset.data)[self.indices]).tobytes())
        else:  # Caltech101: numbered files per category
            h.update(np.asarray(self.dataset.index)[self.indices].tobytes())
        h.update(self.targets.tobytes())
        return h.hexdigest()


def transfer_raws(name: str, root: str | os.PathLike, seed: int = 0
                  ) -> tuple[dict[str, TransferRaw], list[str]]:
    """The official splits of dataset `name` under `root` (torchvision's layout):
    ``({"train": ..., "test": ..., ["val": ...]}, classes)``. A missing root or dataset
    folder raises `DatasetNotFoundError` naming the path; nothing is downloaded. `seed`
    draws Caltech101's 30 training images per class (it has no official split)."""
    if name not in TRANSFER_DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of "
                        + ", ".join(TRANSFER_DATASETS))
    spec = TRANSFER_DATASETS[name]
    root = Path(root).expanduser()
    expected = root / spec.folder
    how = (f"Nothing is downloaded: put torchvision's {name} layout there, or point "
           "data.root at the folder that holds it")
    if not expected.exists():
        raise DatasetNotFoundError(name, expected, how)
    try:
        if name == "Caltech101":
            return _caltech101(spec.make(str(root), "train"), seed)
        if name == "SUN397":
            return _sun397(spec.make(str(root), "train"), root)
        made = {s: spec.make(str(root), s) for s in spec.splits}
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise DatasetNotFoundError(name, expected, f"{how} ({' '.join(str(e).split())})") from None
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
        raise CorruptDatasetError(expected, f"cannot be read as {name} ({e!r})",
                                  "Fetch the dataset again") from None
    classes = _classes(made["train"])
    return {s: TransferRaw(d, name, s, classes) for s, d in made.items()}, classes


def _classes(dataset: Any) -> list[str]:
    return [str(c) for c in getattr(dataset, "classes", None) or dataset.categories]


def _labels(dataset: Any, name: str) -> np.ndarray:
    for attr in ("targets", "_labels", "y"):
        if hasattr(dataset, attr):
            return np.asarray(getattr(dataset, attr), dtype=np.int64)
    if hasattr(dataset, "_samples"):  # StanfordCars: (path, label) pairs
        return np.asarray([label for _, label in dataset._samples], dtype=np.int64)
    raise DataError(f"cannot read the labels of {name} from torchvision's "
                    f"{type(dataset).__name__}: this torchvision version stores them "
                    "differently; use the ImageFolder form of data instead")


def _caltech101(dataset: Any, seed: int) -> tuple[dict[str, TransferRaw], list[str]]:
    labels = _labels(dataset, "Caltech101")
    counts = np.bincount(labels)
    if counts.min() <= 30:
        raise DataError("Caltech101: every class needs more than 30 images (30 train, the rest "
                        f"test); class {dataset.categories[int(counts.argmin())]!r} has "
                        f"{int(counts.min())}")
    parts = stratified_split(labels, {"train": 30, "test": None}, seed)
    classes = _classes(dataset)
    return {s: TransferRaw(dataset, "Caltech101", s, classes, parts[s])
            for s in ("train", "test")}, classes


def _sun397(dataset: Any, root: Path) -> tuple[dict[str, TransferRaw], list[str]]:
    where = {p.relative_to(dataset._data_dir).as_posix(): k
             for k, p in enumerate(dataset._image_files)}
    raws = {}
    classes = _classes(dataset)
    for split, file in (("train", "Training_01.txt"), ("test", "Testing_01.txt")):
        path = root / "Partitions" / file
        if not path.is_file():
            raise DatasetNotFoundError("SUN397 partition file", path,
                                       "Nothing is downloaded: unpack the dataset's "
                                       "Partitions.zip into data.root/Partitions")
        names = [line.strip().lstrip("/") for line in path.read_text().splitlines()
                 if line.strip()]
        missing = [n for n in names if n not in where]
        if missing:
            raise CorruptDatasetError(path, f"lists {len(missing)} images that are not under "
                                      f"{dataset._data_dir} (first: {missing[0]})",
                                      "Fetch the dataset again")
        raws[split] = TransferRaw(dataset, "SUN397", split, classes,
                                  np.asarray([where[n] for n in names], dtype=np.int64))
    return raws, classes
