"""Pseudo boxes: object-like boxes for unlabelled images, the targets of RPN pre-training.

Four sources, none of which downloads anything:

* ``random``: boxes of random size and aspect ratio within limits, seeded by the image
  (UP-DETR's random patches, Dai et al., CVPR 2021);
* ``copy_paste``: a crop of another pool image pasted onto the image, so its box is exact
  (InsLoc, Yang et al., CVPR 2021). It changes the image, so it goes through `paste`;
* ``felzenszwalb``: Felzenszwalb-Huttenlocher segments at several scales, their boxes and
  those of greedily merged neighbours (selective-search style grouping, as SoCo does, Wei
  et al., NeurIPS 2021), from scikit-image (the ``proposals`` extra);
* ``selective_search``: OpenCV's selective search in fast mode (Uijlings et al., IJCV 2013;
  used by DETReg, Bar et al., CVPR 2022), from ``opencv-contrib-python-headless``.

Every source then drops boxes narrower or lower than `min_size` pixels (and those covering
more than `max_area` of the image) and keeps the first `topk`. Proposals are cached per
image: the key is a hash of the image's pixels and of every setting, in memory and, with
`cache_dir`, as one ``.npy`` file per image, so a second epoch costs a lookup.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from betaweighter.io import save_array

__all__ = ["PSEUDO_BOX_METHODS", "PseudoBoxes", "filter_boxes"]

PSEUDO_BOX_METHODS = ("random", "copy_paste", "felzenszwalb", "selective_search")
FELZENSZWALB_SCALES = (50.0, 150.0, 400.0)


def filter_boxes(boxes: np.ndarray, width: int, height: int, *, min_size: float,
                 topk: int, max_area: float = 1.0) -> np.ndarray:
    """Boxes (xyxy, in order of preference) at least `min_size` wide and high, covering
    at most `max_area` of the image, the first `topk` of them."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (w >= min_size) & (h >= min_size) & (w * h <= max_area * width * height + 1e-6)
    return boxes[keep][:topk]


class PseudoBoxes:
    """Pseudo boxes for images given as float tensors (C, H, W) in [0, 1].

    Args:
        method: one of `PSEUDO_BOX_METHODS`.
        topk: boxes kept per image (DETReg keeps 30).
        min_size: smallest box side, in pixels (SoCo: 32 at ImageNet size).
        max_area: largest box area as a fraction of the image's.
        sizes: the box side range for ``random`` and ``copy_paste``, as fractions of the
            shorter image side.
        max_aspect: largest width/height (or height/width) of ``random`` and
            ``copy_paste`` boxes.
        count: boxes per image for ``random``, pasted crops per image for ``copy_paste``.
        seed: seeds ``random`` (with the image's hash) and ``copy_paste``.
        cache_dir: where proposals are kept on disk (None: in memory only).
    """

    def __init__(self, method: str = "random", *, topk: int = 30, min_size: float = 8.0,
                 max_area: float = 0.9, sizes: tuple[float, float] = (0.2, 0.6),
                 max_aspect: float = 2.0, count: int = 4, seed: int = 0,
                 cache_dir: str | Path | None = None) -> None:
        if method not in PSEUDO_BOX_METHODS:
            raise ValueError(f"pseudo-box method must be one of {PSEUDO_BOX_METHODS}, got "
                             f"{method!r}")
        if topk < 1 or count < 1 or min_size < 0 or not 0 < max_area <= 1:
            raise ValueError(f"need topk >= 1, count >= 1, min_size >= 0 and 0 < max_area <= "
                             f"1; got topk={topk}, count={count}, min_size={min_size}, "
                             f"max_area={max_area}")
        if not 0 < sizes[0] <= sizes[1] <= 1 or max_aspect < 1:
            raise ValueError(f"need 0 < sizes[0] <= sizes[1] <= 1 and max_aspect >= 1, got "
                             f"sizes={tuple(sizes)}, max_aspect={max_aspect}")
        self.method, self.topk, self.min_size, self.max_area = method, int(topk), \
            float(min_size), float(max_area)
        self.sizes, self.max_aspect = (float(sizes[0]), float(sizes[1])), float(max_aspect)
        self.count, self.seed = int(count), int(seed)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._memory: dict[str, np.ndarray] = {}
        self.hits = self.misses = 0
        self._generator = torch.Generator().manual_seed(self.seed)
        _require(method)

    @property
    def settings(self) -> dict[str, Any]:
        """Everything that changes the proposals (part of every cache key)."""
        return {"method": self.method, "topk": self.topk, "min_size": self.min_size,
                "max_area": self.max_area, "sizes": list(self.sizes),
                "max_aspect": self.max_aspect, "count": self.count, "seed": self.seed,
                "scales": list(FELZENSZWALB_SCALES) if self.method == "felzenszwalb" else None}

    # -- proposals for an image ---------------------------------------------------------------
    def __call__(self, image: Tensor) -> Tensor:
        """Boxes (k, 4) float32 xyxy in pixels for one image (C, H, W) in [0, 1]; k may be 0.
        Not for ``copy_paste``, which makes its boxes while pasting (`paste`)."""
        if self.method == "copy_paste":
            raise ValueError("copy_paste boxes come with the pasted image: use paste(images)")
        pixels = _uint8(image)
        key = self._key(pixels)
        boxes = self._memory.get(key)
        if boxes is None and self.cache_dir is not None:
            file = self.cache_dir / f"{key}.npy"
            if file.is_file():
                try:
                    boxes = np.load(file)
                except (OSError, ValueError):
                    boxes = None  # a damaged cache file is recomputed, never trusted
        if boxes is not None:
            self.hits += 1
        else:
            self.misses += 1
            boxes = self._propose(pixels, key)
            if self.cache_dir is not None:
                save_array(self.cache_dir / f"{key}.npy", boxes)
        self._memory[key] = boxes
        return torch.from_numpy(np.array(boxes, dtype=np.float32)).reshape(-1, 4)

    def _key(self, pixels: np.ndarray) -> str:
        digest = hashlib.sha1(pixels.tobytes())
        digest.update(repr(pixels.shape).encode())
        digest.update(json.dumps(self.settings, sort_keys=True).encode())
        return digest.hexdigest()

    def _propose(self, pixels: np.ndarray, key: str) -> np.ndarray:
        h, w = pixels.shape[:2]
        if self.method == "random":
            rng = np.random.default_rng([self.seed, int(key[:12], 16)])
            boxes = self._random_boxes(rng, w, h, self.count)
        elif self.method == "felzenszwalb":
            boxes = _felzenszwalb_boxes(pixels)
        else:
            boxes = _selective_search_boxes(pixels)
        return filter_boxes(boxes, w, h, min_size=self.min_size, topk=self.topk,
                            max_area=self.max_area)

    def _random_boxes(self, rng: np.random.Generator, w: int, h: int, n: int) -> np.ndarray:
        short = min(w, h)
        side = rng.uniform(*self.sizes, size=n) * short
        aspect = np.exp(rng.uniform(-math.log(self.max_aspect), math.log(self.max_aspect),
                                    size=n))
        bw = np.clip(side * np.sqrt(aspect), max(1.0, self.min_size), w)
        bh = np.clip(side / np.sqrt(aspect), max(1.0, self.min_size), h)
        x = rng.uniform(0, 1, size=n) * (w - bw)
        y = rng.uniform(0, 1, size=n) * (h - bh)
        return np.stack([x, y, x + bw, y + bh], 1).round().astype(np.float32)

    # -- copy and paste ----------------------------------------------------------------------
    def paste(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``copy_paste``: paste `count` crops taken from the next image of the batch (the
        first image takes from the last) onto each image of `images` (B, C, H, W, any
        normalisation), at random places. Returns the new images and, per image, the exact
        boxes of its pasted crops (a later paste may cover an earlier one: covered boxes
        shrink to their visible extent, or are dropped once hidden entirely)."""
        if images.dim() != 4:
            raise ValueError(f"paste needs a batch (B, C, H, W), got {tuple(images.shape)}")
        b, _, h, w = images.shape
        out = images.clone()
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,),
                                                      generator=self._generator)))
        all_boxes = []
        for i in range(b):
            source = images[(i + 1) % b]
            visible = np.zeros((self.count, h, w), bool)
            for k, (x1, y1, x2, y2) in enumerate(self._random_boxes(rng, w, h, self.count)
                                                 .astype(int)):
                bw, bh = x2 - x1, y2 - y1
                sx, sy = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
                out[i, :, y1:y2, x1:x2] = source[:, sy:sy + bh, sx:sx + bw]
                visible[:, y1:y2, x1:x2] = False
                visible[k, y1:y2, x1:x2] = True
            boxes = []
            for m in visible:
                rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
                if rows.size:
                    boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
            kept = filter_boxes(np.asarray(boxes, np.float32), w, h, min_size=self.min_size,
                                topk=self.topk, max_area=1.0)
            all_boxes.append(torch.from_numpy(kept))
        return out, all_boxes

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("generator") is not None:
            self._generator.set_state(state["generator"])


def _uint8(image: Tensor) -> np.ndarray:
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"pseudo boxes need one image (C, H, W) with 1 or 3 channels, got "
                         f"shape {tuple(image.shape)}")
    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.expand(3, -1, -1).permute(1, 2, 0).numpy())


def _require(method: str) -> None:
    """Fail at construction, naming the extra to install, when a source is missing."""
    if method == "felzenszwalb":
        try:
            import skimage.segmentation  # noqa: F401
        except ImportError:
            raise ImportError("pseudo boxes 'felzenszwalb' need scikit-image: pip install "
                              "'betaweighter[proposals]' (or pip install scikit-image)") from None
    if method == "selective_search":
        try:
            import cv2
        except ImportError:
            contrib = False
        else:
            contrib = hasattr(cv2, "ximgproc")
        if not contrib:
            raise ImportError(
                "pseudo boxes 'selective_search' need OpenCV's contrib modules: pip install "
                "'betaweighter[selective-search]' (opencv-contrib-python-headless; uninstall "
                "opencv-python first, the two cannot share an environment)")


def _felzenszwalb_boxes(pixels: np.ndarray) -> np.ndarray:
    """Boxes of Felzenszwalb segments at several scales and of merged neighbours, finest
    merges first: every segment, then pairs of adjacent segments by colour similarity."""
    from skimage.segmentation import felzenszwalb

    boxes: list[list[float]] = []
    image = pixels.astype(np.float64) / 255.0
    for scale in FELZENSZWALB_SCALES:
        labels = felzenszwalb(image, scale=scale, sigma=0.8, min_size=20)
        n = int(labels.max()) + 1
        rows = np.arange(labels.shape[0])[:, None].repeat(labels.shape[1], 1)
        cols = np.arange(labels.shape[1])[None, :].repeat(labels.shape[0], 0)
        flat = labels.ravel()
        x1 = np.full(n, np.inf)
        y1 = np.full(n, np.inf)
        x2 = np.full(n, -np.inf)
        y2 = np.full(n, -np.inf)
        np.minimum.at(x1, flat, cols.ravel())
        np.minimum.at(y1, flat, rows.ravel())
        np.maximum.at(x2, flat, cols.ravel() + 1)
        np.maximum.at(y2, flat, rows.ravel() + 1)
        counts = np.bincount(flat, minlength=n)
        colour: np.ndarray = np.stack([np.bincount(flat, image[..., c].ravel(), n)
                                       for c in range(3)], 1)  # float: weighted counts
        colour /= counts[:, None]
        segments = np.stack([x1, y1, x2, y2], 1)
        # neighbours: labels that touch horizontally or vertically
        pairs = np.concatenate([np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], 1),
                                np.stack([labels[:-1].ravel(), labels[1:].ravel()], 1)])
        pairs = np.unique(np.sort(pairs[pairs[:, 0] != pairs[:, 1]], 1), axis=0)
        distance = np.abs(colour[pairs[:, 0]] - colour[pairs[:, 1]]).sum(1)
        merged = [np.r_[np.minimum(segments[a, :2], segments[b, :2]),
                        np.maximum(segments[a, 2:], segments[b, 2:])]
                  for a, b in pairs[np.argsort(distance, kind="stable")]]
        boxes += segments[np.argsort(-counts, kind="stable")].tolist()
        boxes += [m.tolist() for m in merged]
    return _unique(np.asarray(boxes, np.float32).reshape(-1, 4))


def _selective_search_boxes(pixels: np.ndarray) -> np.ndarray:
    import cv2

    cv2.setNumThreads(1)
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(pixels[..., ::-1]))  # OpenCV wants BGR
    search.switchToSelectiveSearchFast()
    rects = np.asarray(search.process(), dtype=np.float32).reshape(-1, 4)
    rects[:, 2:] += rects[:, :2]
    return _unique(rects)


def _unique(boxes: np.ndarray) -> np.ndarray:
    """Drop repeated boxes, keeping the first occurrence (the order is the preference)."""
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)]
