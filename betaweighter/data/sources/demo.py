"""The embedded demo set: built from data scikit-learn ships, so it needs no download.

In-domain part: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), upsampled
to 32 px and copied to 3 channels. Out-of-domain distractors: square patches of random
size (32 to 192 px) and position cut from its two sample photographs, box-filtered
down to 32 px, randomly mirrored. The digits are
split, stratified and seeded, into a part that joins the pool (labels dropped) and the
labelled target splits; the pool mixes those digits with the distractors in a seeded
order, and ``in_domain`` says which is which, so a run can report how many of the pruned
instances were digits. It builds in about a second and is cached as one small .npz file.
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
from tqdm.auto import tqdm

from betaweighter.data.arrays import TensorImages
from betaweighter.data.bundle import DataBundle
from betaweighter.data.cache import cache_dir as resolve_cache_dir
from betaweighter.data.indexed import Indexed
from betaweighter.data.options import SEED, Range, integer, ranged
from betaweighter.data.sources import register_data_source
from betaweighter.data.splits import stratified_split
from betaweighter.io import atomic_write_bytes

__all__ = ["DEMO_VERSION", "build_demo_arrays", "demo"]

DEMO_VERSION = 2
#: the allowed values of the numeric arguments (checked by `ranged`, and by the config)
RANGES = dict(seed=SEED,
              pool_fraction=Range(0, 1, lo_open=True, hi_open=True),
              distractor_ratio=Range(0), image_size=integer(8))
_ARRAYS = ("pool", "in_domain", "digits", "labels", "digits_pool", "val_train", "val_test",
           "test")


@ranged(**RANGES)
def build_demo_arrays(seed: int = 0, pool_fraction: float = 0.5,
                      distractor_ratio: float = 1.0, image_size: int = 32) -> dict[str, np.ndarray]:
    """The demo set as uint8 arrays (what the cache file holds); see `demo`."""
    from sklearn.datasets import load_digits, load_sample_images

    digits = load_digits()
    small = torch.from_numpy(digits.images).float()[:, None] / 16.0
    big = F.interpolate(small, size=(image_size, image_size), mode="bilinear",
                        align_corners=False)
    digit_images = (big.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    labels = np.asarray(digits.target, dtype=np.int64)
    rest = (1.0 - pool_fraction) / 3
    parts = stratified_split(labels, {"digits_pool": pool_fraction, "val_train": rest,
                                      "val_test": rest, "test": None}, seed)

    rng = np.random.default_rng([seed, DEMO_VERSION])
    photos = [np.asarray(im, dtype=np.float32).transpose(2, 0, 1)
              for im in load_sample_images().images]
    num_distractors = int(round(distractor_ratio * len(parts["digits_pool"])))
    patches = np.empty((num_distractors, 3, image_size, image_size), dtype=np.uint8)
    for k in tqdm(range(num_distractors), desc="demo distractors", disable=None, leave=False):
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[1:]
        # A square of f x image_size pixels, averaged over f x f blocks: an exact box-filter
        # downscale, single-threaded numpy (tiny torch ops crawl on a busy machine).
        f = int(rng.integers(1, min(h, w) // (2 * image_size) + 1))
        side = f * image_size
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = photo[:, top:top + side, left:left + side]
        patch = crop.reshape(3, image_size, f, image_size, f).mean(axis=(2, 4))
        patches[k] = np.rint(patch[:, :, ::-1] if rng.random() < 0.5 else patch)

    pool = torch.cat([digit_images[parts["digits_pool"]], torch.from_numpy(patches)])
    in_domain = np.r_[np.ones(len(parts["digits_pool"]), bool), np.zeros(num_distractors, bool)]
    order = rng.permutation(len(pool))
    return {"pool": pool[torch.from_numpy(order)].contiguous().numpy(),
            "in_domain": in_domain[order], "digits": digit_images.contiguous().numpy(),
            "labels": labels, **parts}


def _normalise(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(images).float().div_(255.0)
    return x.sub_(mean[:, None, None]).div_(std[:, None, None])


@register_data_source("demo")
@ranged(**RANGES)
def demo(cache_dir: str | os.PathLike | None = None, *, seed: int = 0,
         pool_fraction: float = 0.5, distractor_ratio: float = 1.0, image_size: int = 32,
         rebuild: bool = False) -> DataBundle:
    """The demo experiment: a digits-plus-photo-patches pool and digit target splits.

    Args:
        cache_dir: where the built arrays are kept (default ``$BETAWEIGHTER_CACHE`` or
            ``~/.cache/betaweighter``).
        seed: seeds the digit split, the patches and the pool order.
        pool_fraction: share of each digit class that joins the pool (default half: about
            900 digits); the rest is split in three equal, stratified parts: ``val_train``
            (meta objective, probe fit), ``val_test`` (model selection) and ``test``
            (about 300 digits each, 30 per class, enough for 10-way 10-shot 10-query
            episodes).
        distractor_ratio: distractors per pooled digit (default 1: a half in-domain pool).
        image_size: side of the images (32).
        rebuild: ignore the cache.

    Pool images (3 x 32 x 32) and target images are normalised by the pool's channel
    statistics. ``bundle.in_domain`` marks the digits of the pool.
    """
    config = {"version": DEMO_VERSION, "seed": seed, "pool_fraction": pool_fraction,
              "distractor_ratio": distractor_ratio, "image_size": image_size}
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    file = resolve_cache_dir(cache_dir) / f"demo-v{DEMO_VERSION}-{digest}.npz"
    arrays = None if rebuild else _load(file)
    if arrays is None:
        arrays = build_demo_arrays(seed, pool_fraction, distractor_ratio, image_size)
        _save(file, arrays)

    pixels = torch.from_numpy(arrays["pool"]).float().div_(255.0).transpose(0, 1).reshape(3, -1)
    mean, std = pixels.mean(1), pixels.std(1).clamp_min(1e-6)
    digits = _normalise(arrays["digits"], mean, std)
    labels = arrays["labels"]

    def target(name: str) -> TensorImages:
        idx = arrays[name]
        return TensorImages(digits[torch.from_numpy(idx)], labels[idx])

    return DataBundle(
        name="demo",
        pool=Indexed(TensorImages(_normalise(arrays["pool"], mean, std))),
        target_train=target("val_train"),
        target_val=target("val_test"),
        test=target("test"),
        num_classes=10,
        image_size=image_size,
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
        in_domain=arrays["in_domain"],
        splits={k: arrays[k] for k in ("digits_pool", "val_train", "val_test", "test")},
        info={**config, "cache_file": str(file), "pool_size": int(len(arrays["pool"])),
              "pool_in_domain": int(arrays["in_domain"].sum())},
    )


def _load(file: Path) -> dict[str, np.ndarray] | None:
    if not file.is_file():
        return None
    try:
        with np.load(file) as data:
            arrays = {k: data[k] for k in _ARRAYS}
    except Exception as err:  # a truncated or foreign file: rebuild, never trust it
        logging.getLogger(__name__).warning("ignoring unreadable demo cache %s (%s); "
                                            "rebuilding", file, err)
        return None
    return arrays


def _save(file: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **cast(dict[str, Any], arrays))  # numpy stub quirk
    atomic_write_bytes(file, buffer.getvalue())
