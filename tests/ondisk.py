"""Tiny datasets written in the real on-disk formats (STL-10 binaries, Visual Decathlon
annotation JSON plus JPEGs), for the real loaders and the examples to read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from betaweighter.data.sources.decathlon import DOMAINS

STL_COUNTS = {"unlabeled": 30, "train": 60, "test": 20}  # train: 6 per class


def stl_image(seed: int) -> np.ndarray:
    """An upright (3, 96, 96) uint8 image whose orientation is easy to check: the top rows
    are bright, the left columns are dark."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 190, size=(3, 96, 96), dtype=np.uint8)
    image[:, :8, :] = 250
    image[:, :, :8] = 5
    return image


def write_stl10(root: Path, counts: dict[str, int] = STL_COUNTS) -> dict[str, np.ndarray]:
    """Write ``root/stl10_binary`` as the official files are laid out (column-major images,
    1-based uint8 labels). Returns the upright images and 0-based labels written."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for s, (split, n) in enumerate(counts.items()):
        images = np.stack([stl_image(1000 * s + i) for i in range(n)])
        images.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")
        written[split] = images
        if split != "unlabeled":
            labels = np.arange(n) % 10
            (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
            written[f"{split}_labels"] = labels
    return written


# -- Visual Decathlon ---------------------------------------------------------------------
DECATHLON_SIZES = {"train": 4, "val": 2}  # images per class
DECATHLON_CLASSES = 3
DECATHLON_TEST = 3


def domain_colour(domain: str) -> np.ndarray:
    """A distinct mean colour per domain, so per-domain statistics differ."""
    k = DOMAINS.index(domain)
    return np.array([20 + 20 * k, 220 - 18 * k, 60 + 10 * (k % 5)], dtype=np.float64)


def write_decathlon(root: Path, domains: tuple[str, ...] = DOMAINS) -> Path:
    """``root/decathlon-1.0/{annotations,data}`` with COCO-style JSON and JPEG images, ids
    and category ids offset per domain as in the official files."""
    base = root / "decathlon-1.0"
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    for d, domain in enumerate(domains):
        rng = np.random.default_rng(d)
        cats = [{"id": 10_000 * (d + 1) + c + 1, "name": f"{domain}-class{c}"}
                for c in range(DECATHLON_CLASSES)]
        for split in ("train", "val", "test"):
            folder = base / "data" / domain / split
            folder.mkdir(parents=True, exist_ok=True)
            n = DECATHLON_TEST if split == "test" else DECATHLON_SIZES[split] * DECATHLON_CLASSES
            images, annotations = [], []
            for i in range(n):
                image_id = 1_000_000 * (d + 1) + 1000 * ("train", "val", "test").index(split) + i
                name = f"data/{domain}/{split}/{i:05d}.jpg"
                h, w = (18 + i % 3, 24) if i % 2 else (24, 20)
                pixels = domain_colour(domain) + rng.normal(0, 12, size=(h, w, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(base / name,
                                                                             quality=95)
                images.append({"id": image_id, "file_name": name, "width": w, "height": h})
                if split != "test":
                    annotations.append({"id": image_id, "image_id": image_id,
                                         "category_id": cats[i % DECATHLON_CLASSES]["id"]})
            doc = {"images": images, "categories": cats}
            if split != "test":
                doc["annotations"] = annotations
            (base / "annotations" / f"{domain}_{split}.json").write_text(json.dumps(doc))
    return root
