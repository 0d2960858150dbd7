"""Generated detection data: coloured shapes on textured backgrounds, with exact boxes.

Nothing is downloaded: every image is drawn from a seed. A scene is a smooth random texture
(a few low-frequency sinusoids plus noise) with one to three filled shapes (square, disc,
triangle) of random colour, size and position; the boxes are the shapes' exact pixel
extents. Distractors are textures of another kind (high-frequency stripes and noise) with
no object at all, so a pool that mixes both has an in-domain part and a useless part, as
the weighted RPN pre-training of the benchmark needs.

Three ways out:

* `write_shapes_voc` and `write_shapes_coco` write a labelled detection set in the real
  Pascal VOC (XML, 1-based corners, JPEG images) and COCO (JSON, [x, y, w, h], PNG images)
  layouts, for `load_voc` / `load_coco` and the detection evaluator;
* `shapes` builds a `DataBundle` for a pre-training run: the unlabelled pool (scenes and
  distractors, normalised by the pool's channel statistics, ``in_domain`` marking the
  scenes), labelled crops of the shapes as the classification target (the per-epoch linear
  probe and the prototypical meta objective) and a few labelled scenes as
  ``detection_target`` (the detection meta objective).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from betaweighter.data.arrays import TensorImages
from betaweighter.data.bundle import DataBundle
from betaweighter.data.indexed import Indexed
from betaweighter.data.options import SEED, Range, integer, ranged
from betaweighter.data.sources import register_data_source

__all__ = ["SHAPE_CLASSES", "BoxedImages", "distractor_image", "shapes", "shapes_scene",
           "write_shapes_coco", "write_shapes_voc"]

SHAPE_CLASSES = ("square", "disc", "triangle")


def _texture(rng: np.random.Generator, size: int, waves: int, freq: tuple[float, float],
             noise: float) -> np.ndarray:
    """A (size, size, 3) float texture in [0, 255]: random sinusoids plus pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    base = rng.uniform(70, 170, size=3)
    out = np.broadcast_to(base, (size, size, 3)).copy()
    for _ in range(waves):
        f = rng.uniform(*freq)
        angle = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * f * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        out += wave[..., None] * rng.uniform(-25, 25, size=3)
    out += rng.normal(0, noise, size=out.shape)
    return out.clip(0, 255)


def _mask(kind: str, side_w: int, side_h: int) -> np.ndarray:
    """The filled shape inside a (side_h, side_w) region (pixel centres tested)."""
    yy, xx = np.mgrid[0:side_h, 0:side_w].astype(np.float64)
    u, v = (xx + 0.5) / side_w, (yy + 0.5) / side_h
    if kind == "square":
        return np.ones((side_h, side_w), bool)
    if kind == "disc":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    return np.abs(u - 0.5) <= v / 2  # triangle, apex up


def shapes_scene(rng: np.random.Generator, size: int = 96, objects: tuple[int, int] = (1, 3),
                 sides: tuple[float, float] = (0.18, 0.45),
                 classes: tuple[str, ...] = SHAPE_CLASSES
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: (uint8 pixels (size, size, 3), boxes (n, 4) float32 xyxy in pixels with
    exclusive right/bottom edges, labels (n,) int64 in 1..len(classes)). Shapes overlap
    one another by at most 10 % IoU."""
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    pixels = _texture(rng, size, waves=3, freq=(0.5, 2.0), noise=6.0)
    count = int(rng.integers(objects[0], objects[1] + 1))
    boxes: list[list[int]] = []
    labels: list[int] = []
    for _ in range(50 * count):
        if len(boxes) == count:
            break
        w, h = (int(round(s * size)) for s in rng.uniform(*sides, size=2))
        w, h = max(w, 6), max(h, 6)
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        box = [x, y, x + w, y + h]
        if any(_iou(box, b) > 0.1 for b in boxes):
            continue
        label = int(rng.integers(len(classes)))
        colour = rng.uniform(0, 255, size=3)
        while np.abs(colour - pixels[y:y + h, x:x + w].mean((0, 1))).max() < 60:
            colour = rng.uniform(0, 255, size=3)
        m = _mask(classes[label], w, h)
        region = pixels[y:y + h, x:x + w]
        region[m] = colour + rng.normal(0, 4, size=(int(m.sum()), 3))
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        box = [x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]) + 1, y + int(rows[-1]) + 1]
        boxes.append(box)
        labels.append(label + 1)
    return (pixels.clip(0, 255).round().astype(np.uint8),
            np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64))


def distractor_image(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A texture of another kind, with no object: fine stripes and strong noise."""
    pixels = _texture(rng, size, waves=6, freq=(6.0, 16.0), noise=30.0)
    return pixels.round().astype(np.uint8)


def _iou(a: list[int], b: list[int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _scenes(n: int, size: int, seed: int, tag: int) -> list[tuple]:
    rng = np.random.default_rng([seed, tag])
    return [shapes_scene(rng, size) for _ in range(n)]


# -- on-disk detection sets ---------------------------------------------------------------------
def write_shapes_voc(root: str | Path, images: int = 20, size: int = 96, seed: int = 0,
                     split: str = "trainval", start: int = 0) -> Path:
    """A Pascal VOC directory (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<split>
    .txt``) of `images` scenes; ids ``start..start+images-1``, zero-padded to 6 digits.
    Calling it again with another split and `start` adds a split to the same root."""
    root = Path(root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for k, (pixels, boxes, labels) in enumerate(_scenes(images, size, seed, 1 + start)):
        image_id = f"{start + k:06d}"
        ids.append(image_id)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        parts = [f"<annotation><folder>shapes</folder><filename>{image_id}.jpg</filename>"
                 f"<size><width>{size}</width><height>{size}</height><depth>3</depth></size>"]
        for (x1, y1, x2, y2), label in zip(boxes.astype(int), labels):
            parts.append(f"<object><name>{SHAPE_CLASSES[label - 1]}</name><difficult>0"
                         f"</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
                         f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
        parts.append("</annotation>")
        (root / "Annotations" / f"{image_id}.xml").write_text("".join(parts))
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def write_shapes_coco(root: str | Path, images: int = 20, size: int = 96,
                      seed: int = 0) -> tuple[Path, Path]:
    """A COCO detection set of `images` scenes: (images directory, annotation file)."""
    root = Path(root)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": [
        {"id": k + 1, "name": n} for k, n in enumerate(SHAPE_CLASSES)]}
    for k, (pixels, boxes, labels) in enumerate(_scenes(images, size, seed, 0)):
        name = f"{k:06d}.png"
        Image.fromarray(pixels).save(image_dir / name)
        coco["images"].append({"id": k + 1, "file_name": name, "width": size, "height": size})
        for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": k + 1, "category_id": label,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0})
    annotations = root / "annotations.json"
    annotations.write_text(json.dumps(coco))
    return image_dir, annotations


# -- a pre-training bundle ----------------------------------------------------------------------
class BoxedImages(Dataset):
    """Labelled detection images as tensors: ``[i] == (image (C, H, W), {"boxes": (n, 4)
    xyxy, "labels": (n,)})``, the images already normalised."""

    def __init__(self, images: Tensor, boxes: list[Tensor], labels: list[Tensor]) -> None:
        if len(images) != len(boxes) or len(boxes) != len(labels):
            raise ValueError(f"{len(images)} images, {len(boxes)} box sets and {len(labels)} "
                             "label sets: give one of each per image")
        self.images, self.boxes, self.labels = images, boxes, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.images[i], {"boxes": self.boxes[i], "labels": self.labels[i]}


def _crops(scenes: list[tuple], crop: int) -> tuple[Tensor, np.ndarray]:
    """Every shape of `scenes`, cropped with a 15 % margin and resized to crop x crop."""
    out, labels = [], []
    for pixels, boxes, labs in scenes:
        image = torch.from_numpy(pixels).permute(2, 0, 1).float()[None]
        size = pixels.shape[0]
        for (x1, y1, x2, y2), label in zip(boxes, labs):
            mx, my = 0.15 * (x2 - x1), 0.15 * (y2 - y1)
            a, b = int(max(0, x1 - mx)), int(max(0, y1 - my))
            c, d = int(min(size, x2 + mx + 1)), int(min(size, y2 + my + 1))
            out.append(F.interpolate(image[..., b:d, a:c], size=(crop, crop), mode="bilinear",
                                     align_corners=False, antialias=True)[0])
            labels.append(int(label) - 1)
    return torch.stack(out).clamp(0, 255).round().to(torch.uint8), np.asarray(labels)


@register_data_source("shapes")
@ranged(seed=SEED, pool_images=integer(1), distractor_ratio=Range(0),
        image_size=integer(16), target_scenes=integer(6), crop_size=integer(8),
        detection_target_images=integer(1))
def shapes(*, seed: int = 0, pool_images: int = 400, distractor_ratio: float = 1.0,
           image_size: int = 96, target_scenes: int = 60, crop_size: int = 32,
           detection_target_images: int = 16) -> DataBundle:
    """A pre-training bundle of shapes scenes (see the module docstring).

    Args:
        seed: seeds every image.
        pool_images: scenes in the unlabelled pool.
        distractor_ratio: distractors per pool scene (0 = a pool of scenes only).
        image_size: side of the square scenes (pixels).
        target_scenes: scenes whose shape crops make the labelled target (split in three:
            target_train, target_val, test, by scene, so no object is in two splits).
        crop_size: side of the target crops.
        detection_target_images: labelled scenes (with boxes) in ``detection_target``.
    """
    rng = np.random.default_rng([seed, 7])
    scenes = _scenes(pool_images, image_size, seed, 100)
    n_distractors = int(round(distractor_ratio * pool_images))
    distractors = [distractor_image(rng, image_size) for _ in range(n_distractors)]
    pixels = np.stack([s[0] for s in scenes] + distractors)
    in_domain = np.r_[np.ones(pool_images, bool), np.zeros(n_distractors, bool)]
    order = rng.permutation(len(pixels))
    pixels, in_domain = pixels[order], in_domain[order]
    pool = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0)
    flat = pool.transpose(0, 1).reshape(3, -1)
    mean, std = flat.mean(1), flat.std(1).clamp_min(1e-6)

    def normalise(x: Tensor) -> Tensor:
        return (x.float() / 255.0 - mean[:, None, None]) / std[:, None, None]

    pool = (pool - mean[:, None, None]) / std[:, None, None]
    target = _scenes(target_scenes, image_size, seed, 200)
    third = target_scenes // 3
    parts = {"target_train": target[:third], "target_val": target[third:2 * third],
             "test": target[2 * third:]}
    sets = {}
    for name, part in parts.items():
        crops, labels = _crops(part, crop_size)
        sets[name] = TensorImages(normalise(crops), labels)
    labelled = _scenes(detection_target_images, image_size, seed, 300)
    detection_target = BoxedImages(
        normalise(torch.from_numpy(np.stack([s[0] for s in labelled])).permute(0, 3, 1, 2)),
        [torch.from_numpy(s[1]) for s in labelled], [torch.from_numpy(s[2]) for s in labelled])
    return DataBundle(
        name="shapes", pool=Indexed(TensorImages(pool)), target_train=sets["target_train"],
        target_val=sets["target_val"], test=sets["test"], num_classes=len(SHAPE_CLASSES),
        image_size=image_size, mean=tuple(mean.tolist()), std=tuple(std.tolist()),
        in_domain=in_domain, detection_target=detection_target,
        splits={"pool_order": order},
        info={"seed": seed, "pool_images": pool_images, "distractors": n_distractors,
              "image_size": image_size, "crop_size": crop_size,
              "detection_target_images": detection_target_images})
