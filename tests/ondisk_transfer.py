"""Tiny copies of torchvision-read transfer datasets in their published layouts (DTD's
image folders and split lists, CIFAR-10's pickled batches), for the real readers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

DTD_CLASSES = ("banded", "dotted", "striped")
CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")


def _pixels(rng: np.random.Generator, label: int, size: int, noise: float) -> np.ndarray:
    """An (H, W, 3) uint8 image whose mean colour depends on `label`."""
    base = np.array([60 + 50 * (label % 4), 200 - 40 * (label % 3), 40 + 30 * (label % 5)])
    return np.clip(base + rng.normal(0, noise, size=(size, size, 3)), 0, 255).astype(np.uint8)


def write_dtd(root: Path, per_split: dict[str, int] | None = None, size: int = 20,
              seed: int = 0) -> dict[str, list[tuple[str, int]]]:
    """``root/dtd/dtd/{images/<class>/*.jpg, labels/{train,val,test}1.txt}`` as the DTD
    archive unpacks (the folder torchvision's ``DTD(root)`` reads). Returns per split the
    (relative file, label) pairs written, labels by the sorted class names."""
    per_split = per_split or {"train": 4, "val": 2, "test": 3}  # images per class
    base = root / "dtd" / "dtd"
    rng = np.random.default_rng(seed)
    written: dict[str, list[tuple[str, int]]] = {}
    (base / "labels").mkdir(parents=True, exist_ok=True)
    for split, n in per_split.items():
        rows = []
        for label, name in enumerate(DTD_CLASSES):
            (base / "images" / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                file = f"{name}/{name}_{split}_{i:04d}.jpg"
                Image.fromarray(_pixels(rng, label, size, 15)).save(base / "images" / file,
                                                                    quality=95)
                rows.append((file, label))
        (base / "labels" / f"{split}1.txt").write_text("".join(f"{f}\n" for f, _ in rows))
        written[split] = rows
    return written


def write_cifar10(root: Path, train: int = 40, test: int = 20, noise: float = 10.0,
                  seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/cifar-10-batches-py`` as the official archive unpacks: five pickled training
    batches, one test batch (rows of 3072 bytes, channel-major), ``batches.meta``. Returns
    per split the (N, 32, 32, 3) images and labels written."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in (("train", train), ("test", test)):
        labels = np.arange(n) % len(CIFAR_NAMES)
        images = np.stack([_pixels(rng, int(k), 32, noise) for k in labels])
        written[split] = (images, labels)
        rows = images.transpose(0, 3, 1, 2).reshape(n, -1)
        names = ["test_batch"] if split == "test" else [f"data_batch_{b}" for b in range(1, 6)]
        for name, part in zip(names, np.array_split(np.arange(n), len(names))):
            batch = {"batch_label": name, "labels": labels[part].tolist(), "data": rows[part],
                     "filenames": [f"img_{k}.png" for k in part]}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"num_cases_per_batch": train // 5, "label_names": list(CIFAR_NAMES),
            "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written
