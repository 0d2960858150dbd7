"""Offline data for `benchmarks/invariance.py`: two pre-training pools, each with two
downstream tasks that want different invariances.

* ``demo``: the library's embedded demo set (scikit-learn digits mixed with patches of its
  two sample photographs). Task ``digits``: the demo's own digit splits (identity depends
  on orientation: a rotated 6 is a 9). Task ``photo_regions``: new patches of the two
  photographs, labelled by photograph and quadrant (8 classes), each turned by a random
  multiple of 90 degrees and randomly mirrored, so orientation carries no information and
  colour and texture carry all of it.
* ``textured_digits``: built here from scikit-learn's digits: each 32 px image is a digit
  painted in one of six hues (red, yellow, green, cyan, blue, magenta; jittered) at a random
  position on a random grey-ish texture (stripes at any angle, a checkerboard or smooth
  noise). Task ``digit``: which digit (10 classes; colour is a nuisance). Task ``colour``:
  which hue (6 classes; shape and position are nuisances). The digits behind the pool,
  train, val and test images are disjoint.

Every builder returns uint8 images; `normalised` turns them into the float tensors the
library's pools and probes use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import betaweighter as bw
from betaweighter.data import TensorImages

SIZE = 32


@dataclass
class BenchData:
    name: str
    pool: torch.Tensor                      # uint8 (N, 3, 32, 32), unlabelled
    target: tuple[torch.Tensor, np.ndarray]  # labelled images for BDW's meta objective
    tasks: dict[str, dict[str, tuple[torch.Tensor, np.ndarray]]]  # task -> split -> (x, y)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def normalised(self, images: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(self.mean).view(1, 3, 1, 1)
        s = torch.tensor(self.std).view(1, 3, 1, 1)
        return (images.float() / 255 - m) / s

    def split(self, task: str, name: str) -> TensorImages:
        x, y = self.tasks[task][name]
        return TensorImages(self.normalised(x), y)


def _stats(pool: torch.Tensor) -> tuple[tuple, tuple]:
    pixels = pool.float().div(255).transpose(0, 1).reshape(3, -1)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).clamp_min(1e-6).tolist())


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


# -- demo --------------------------------------------------------------------------------
def _photo_regions(rng: np.random.Generator, per_class: int) -> tuple[torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255
              for im in load_sample_images().images]
    images, labels = [], []
    for p, photo in enumerate(photos):
        h, w = photo.shape[1] // 2, photo.shape[2] // 2
        for q in range(4):
            top0, left0 = (q // 2) * h, (q % 2) * w
            for _ in range(per_class):
                f = int(rng.integers(1, 4))
                side = f * SIZE
                top = top0 + int(rng.integers(h - side + 1))
                left = left0 + int(rng.integers(w - side + 1))
                crop = photo[:, top:top + side, left:left + side]
                patch = torch.from_numpy(crop.reshape(3, SIZE, f, SIZE, f).mean(axis=(2, 4)))
                patch = torch.rot90(patch, int(rng.integers(4)), dims=(1, 2))
                if rng.random() < 0.5:
                    patch = patch.flip(-1)
                images.append(patch)
                labels.append(4 * p + q)
    order = rng.permutation(len(images))
    return _to_uint8(torch.stack(images))[torch.from_numpy(order)], np.asarray(labels)[order]


def demo_data(seed: int = 0, per_class: int = 90) -> BenchData:
    bundle = bw.data.demo(seed=seed)
    back = [(bw.evaluate.to_uint8(ds.images, bundle.mean, bundle.std), ds.targets)
            for ds in (bundle.target_train, bundle.target_val, bundle.test)]
    pool = bw.evaluate.to_uint8(bundle.pool.dataset.images, bundle.mean, bundle.std)
    x, y = _photo_regions(np.random.default_rng([seed, 7]), per_class)
    n = len(y)
    regions = {"train": (x[: n * 4 // 9], y[: n * 4 // 9]),
               "val": (x[n * 4 // 9: n * 6 // 9], y[n * 4 // 9: n * 6 // 9]),
               "test": (x[n * 6 // 9:], y[n * 6 // 9:])}
    return BenchData("demo", pool, back[0], {
        "digits": dict(zip(("train", "val", "test"), back)), "photo_regions": regions},
        bundle.mean, bundle.std)


# -- textured digits ---------------------------------------------------------------------
HUES = 6


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    k = lambda n: (n + h * 6) % 6  # noqa: E731
    f = lambda n: v - v * s * np.clip(np.minimum(k(n), 4 - k(n)), 0, 1)  # noqa: E731
    return np.stack([f(5), f(3), f(1)], axis=-1)


def _texture(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    kind = rng.integers(3)
    if kind == 0:  # stripes at a random angle and frequency
        theta, freq = rng.uniform(0, math.pi), rng.uniform(0.08, 0.25)
        tex = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * math.cos(theta)
                                                       + yy * math.sin(theta))
                                 + rng.uniform(0, 2 * math.pi))
    elif kind == 1:  # checkerboard
        period = rng.integers(3, 9)
        tex = ((xx // period + yy // period) % 2).astype(np.float64)
    else:  # smooth noise
        small = rng.random((6, 6))
        tex = F.interpolate(torch.from_numpy(small)[None, None], size=(SIZE, SIZE),
                            mode="bicubic", align_corners=False)[0, 0].clamp(0, 1).numpy()
    grey = rng.uniform(0.25, 0.55) + rng.uniform(0.1, 0.25) * (tex - 0.5)
    tint = rng.uniform(-0.03, 0.03, size=3)
    return np.clip(grey[..., None] + tint, 0, 1)


def _draw(rng: np.random.Generator, digits: np.ndarray, labels: np.ndarray,
          count: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    masks = F.interpolate(torch.from_numpy(digits).float()[:, None] / 16.0, size=(18, 18),
                          mode="bilinear", align_corners=False)[:, 0].clamp(0, 1).numpy()
    images = np.empty((count, SIZE, SIZE, 3))
    which = rng.integers(len(digits), size=count)
    hue = rng.integers(HUES, size=count)
    for i in range(count):
        canvas = _texture(rng)
        top, left = (int(v) for v in rng.integers(2, SIZE - 18 - 1, size=2))
        mask = np.zeros((SIZE, SIZE))
        mask[top:top + 18, left:left + 18] = masks[which[i]]
        colour = _hsv_to_rgb(np.asarray(hue[i] / HUES + rng.uniform(-0.03, 0.03)),
                             np.asarray(rng.uniform(0.7, 1.0)), np.asarray(rng.uniform(0.75, 1)))
        images[i] = canvas * (1 - mask[..., None]) + colour * mask[..., None]
    x = _to_uint8(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    return x, labels[which], hue


def textured_digits(seed: int = 0, pool: int = 2000, train: int = 600, val: int = 300,
                    test: int = 600) -> BenchData:
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng([seed, 11])
    order = rng.permutation(len(d.target))
    parts = np.array_split(order, [900, 1300, 1500])  # pool, train, val, test digits
    sizes = (pool, train, val, test)
    drawn = [_draw(rng, d.images[p], d.target[p], n) for p, n in zip(parts, sizes)]
    mean, std = _stats(drawn[0][0])
    tasks = {"digit": {}, "colour": {}}
    for name, (x, digit, hue) in zip(("train", "val", "test"), drawn[1:]):
        tasks["digit"][name] = (x, digit)
        tasks["colour"][name] = (x, hue)
    return BenchData("textured_digits", drawn[0][0], tasks["digit"]["train"], tasks, mean, std)


DATASETS = {"demo": demo_data, "textured_digits": textured_digits}
