"""A second offline experiment: oriented shapes, mixed with four kinds of distractors.

The labelled target is procedurally drawn shapes (eight classes: triangle, square,
pentagon, star, cross, arrow, L and T), each in a random colour, size and position on a
plain random background, at a random angle within +-30 degrees of upright, so that the
rotation pretext can tell their orientation. The pool mixes unlabelled shapes with
distractors of four kinds, in equal shares:

* ``digits``: scikit-learn's handwritten digits (another domain, rotation learnable);
* ``photos``: patches of scikit-learn's sample photographs (natural images);
* ``noise``: Gaussian noise images (nothing to learn, rotation undefined);
* ``symmetric``: concentric rings and flat colours (rotation cannot be told at all).

``DataBundle.in_domain`` marks the shapes, and ``info["kinds"]`` names every pool image's
kind, so a run can report what was pruned. Nothing is downloaded; the arrays are built in
seconds and cached like the demo set's.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from betaweighter.data.arrays import TensorImages
from betaweighter.data.bundle import DataBundle
from betaweighter.data.cache import cache_dir as resolve_cache_dir
from betaweighter.data.indexed import Indexed
from betaweighter.data.options import SEED, Range, integer, ranged
from betaweighter.data.sources import register_data_source
from betaweighter.data.splits import stratified_split
from betaweighter.io import atomic_write_bytes

__all__ = ["DISTRACTORS", "SHAPES", "mixture"]

VERSION = 1
SHAPES = ("triangle", "square", "pentagon", "star", "cross", "arrow", "L", "T")
DISTRACTORS = ("digits", "photos", "noise", "symmetric")
_OUTLINES = {  # unit outlines (x right, y down), pointing up when upright
    "triangle": [(0, -1), (0.87, 0.5), (-0.87, 0.5)],
    "square": [(-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7)],
    "pentagon": [(np.sin(a), -np.cos(a)) for a in np.linspace(0, 2 * np.pi, 6)[:-1]],
    "star": [(r * np.sin(a), -r * np.cos(a)) for a, r in
             zip(np.linspace(0, 2 * np.pi, 11)[:-1], [1, 0.4] * 5)],
    "cross": [(-0.25, -1), (0.25, -1), (0.25, -0.25), (1, -0.25), (1, 0.25), (0.25, 0.25),
              (0.25, 1), (-0.25, 1), (-0.25, 0.25), (-1, 0.25), (-1, -0.25), (-0.25, -0.25)],
    "arrow": [(0, -1), (0.7, -0.2), (0.25, -0.2), (0.25, 1), (-0.25, 1), (-0.25, -0.2),
              (-0.7, -0.2)],
    "L": [(-0.6, -1), (-0.15, -1), (-0.15, 0.55), (0.7, 0.55), (0.7, 1), (-0.6, 1)],
    "T": [(-0.9, -1), (0.9, -1), (0.9, -0.55), (0.22, -0.55), (0.22, 1), (-0.22, 1),
          (-0.22, -0.55), (-0.9, -0.55)],
}


def _shape(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    colour = tuple(int(v) for v in (np.asarray(background) + rng.integers(96, 160, 3)) % 256)
    image = Image.new("RGB", (size, size), background)
    scale = rng.uniform(0.28, 0.42) * size
    cx, cy = rng.uniform(0.4, 0.6, 2) * size
    angle = np.deg2rad(rng.uniform(-30, 30))
    c, s = np.cos(angle), np.sin(angle)
    points = [(cx + scale * (c * x - s * y), cy + scale * (s * x + c * y))
              for x, y in _OUTLINES[SHAPES[label]]]
    ImageDraw.Draw(image).polygon(points, fill=colour)
    return np.asarray(image).transpose(2, 0, 1)


def _symmetric(rng: np.random.Generator, size: int) -> np.ndarray:
    if rng.random() < 0.5:
        return np.broadcast_to(rng.integers(0, 256, (3, 1, 1)), (3, size, size)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    radius = np.sqrt(xx**2 + yy**2)
    period = rng.uniform(3, 8)
    a, b = rng.integers(0, 256, (2, 3, 1, 1))
    rings = (np.sin(radius / period * 2 * np.pi) > 0)[None]
    return np.where(rings, a, b).astype(np.uint8)


def _photo_patches(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(im, dtype=np.float32).transpose(2, 0, 1)
              for im in load_sample_images().images]
    out = np.empty((count, 3, size, size), dtype=np.uint8)
    for k in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        f = int(rng.integers(1, min(photo.shape[1:]) // (2 * size) + 1))
        side = f * size
        top = int(rng.integers(photo.shape[1] - side + 1))
        left = int(rng.integers(photo.shape[2] - side + 1))
        crop = photo[:, top:top + side, left:left + side]
        out[k] = np.rint(crop.reshape(3, size, f, size, f).mean(axis=(2, 4)))
    return out


def _digits(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images).float()[:, None] / 16.0
    big = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    pick = rng.choice(len(big), count, replace=count > len(big))
    return (big[pick].clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).numpy()


#: the allowed values of the numeric arguments (checked by `ranged`, and by the config)
RANGES = dict(seed=SEED, shapes_per_class=integer(8),
              pool_fraction=Range(0, 1, lo_open=True, hi_open=True), distractor_ratio=Range(0),
              image_size=integer(8))


@ranged(**RANGES)
def build_mixture_arrays(seed: int = 0, shapes_per_class: int = 200, pool_fraction: float = 0.5,
                         distractor_ratio: float = 1.0, image_size: int = 32
                         ) -> dict[str, np.ndarray]:
    """The experiment as uint8 arrays (what the cache file holds); see `mixture`."""
    rng = np.random.default_rng([seed, VERSION])
    labels = np.repeat(np.arange(len(SHAPES)), shapes_per_class)
    shapes = np.stack([_shape(rng, int(y), image_size) for y in labels])
    rest = (1.0 - pool_fraction) / 3
    parts = stratified_split(labels, {"shapes_pool": pool_fraction, "val_train": rest,
                                      "val_test": rest, "test": None}, seed)
    per_kind = int(round(distractor_ratio * len(parts["shapes_pool"]) / len(DISTRACTORS)))
    makers = {"digits": lambda n: _digits(rng, n, image_size),
              "photos": lambda n: _photo_patches(rng, n, image_size),
              "noise": lambda n: np.clip(rng.normal(128, 64, (n, 3, image_size, image_size)),
                                         0, 255).astype(np.uint8),
              "symmetric": lambda n: np.stack([_symmetric(rng, image_size)
                                               for _ in range(n)]) if n else
              np.zeros((0, 3, image_size, image_size), np.uint8)}
    blocks = [shapes[parts["shapes_pool"]]] + [makers[k](per_kind) for k in DISTRACTORS]
    kinds = np.repeat(np.arange(len(DISTRACTORS) + 1),
                      [len(parts["shapes_pool"])] + [per_kind] * len(DISTRACTORS))
    order = rng.permutation(len(kinds))
    return {"pool": np.concatenate(blocks)[order], "kinds": kinds[order], "shapes": shapes,
            "labels": labels, **parts}


@register_data_source("mixture")
@ranged(**RANGES)
def mixture(cache_dir: str | os.PathLike | None = None, *, seed: int = 0,
            shapes_per_class: int = 200, pool_fraction: float = 0.5,
            distractor_ratio: float = 1.0, image_size: int = 32,
            rebuild: bool = False) -> DataBundle:
    """Shapes as the labelled target, a pool of shapes and four distractor kinds.

    Args:
        cache_dir: where the built arrays are kept (as for `demo`).
        seed: seeds the drawing, the splits and the pool order.
        shapes_per_class: shapes drawn per class (8 classes); `pool_fraction` of each class
            joins the pool unlabelled, the rest splits equally into ``val_train``,
            ``val_test`` and ``test``.
        distractor_ratio: distractors per pooled shape, split equally between the four kinds.
        image_size: side of the images.

    ``bundle.in_domain`` marks the pooled shapes; ``bundle.info["kinds"]`` lists each pool
    image's kind ("shapes" or one of `DISTRACTORS`).
    """
    config = {"version": VERSION, "seed": seed, "shapes_per_class": shapes_per_class,
              "pool_fraction": pool_fraction, "distractor_ratio": distractor_ratio,
              "image_size": image_size}
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    file = resolve_cache_dir(cache_dir) / f"mixture-v{VERSION}-{digest}.npz"
    arrays = None if rebuild else _load(file)
    if arrays is None:
        arrays = build_mixture_arrays(seed, shapes_per_class, pool_fraction, distractor_ratio,
                                      image_size)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **cast(dict[str, Any], arrays))  # numpy stub quirk
        atomic_write_bytes(file, buffer.getvalue())
    pixels = torch.from_numpy(arrays["pool"]).float().div_(255.0).transpose(0, 1).reshape(3, -1)
    mean, std = pixels.mean(1), pixels.std(1).clamp_min(1e-6)

    def normalised(images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images).float().div_(255.0)
        return x.sub_(mean[:, None, None]).div_(std[:, None, None])

    shapes = normalised(arrays["shapes"])

    def target(name: str) -> TensorImages:
        idx = arrays[name]
        return TensorImages(shapes[torch.from_numpy(idx)], arrays["labels"][idx])

    names = ("shapes",) + DISTRACTORS
    return DataBundle(
        name="mixture", pool=Indexed(TensorImages(normalised(arrays["pool"]))),
        target_train=target("val_train"), target_val=target("val_test"), test=target("test"),
        num_classes=len(SHAPES), image_size=image_size, mean=tuple(mean.tolist()),
        std=tuple(std.tolist()), in_domain=arrays["kinds"] == 0,
        splits={k: arrays[k] for k in ("shapes_pool", "val_train", "val_test", "test")},
        info={**config, "cache_file": str(file), "pool_size": int(len(arrays["pool"])),
              "kinds": [names[k] for k in arrays["kinds"]]})


def _load(file: Path) -> dict[str, np.ndarray] | None:
    if not file.is_file():
        return None
    keys = ("pool", "kinds", "shapes", "labels", "shapes_pool", "val_train", "val_test", "test")
    try:
        with np.load(file) as data:
            return {k: data[k] for k in keys}
    except Exception as err:  # a truncated or foreign file: rebuild, never trust it
        logging.getLogger(__name__).warning("ignoring unreadable mixture cache %s (%s); "
                                            "rebuilding", file, err)
        return None
