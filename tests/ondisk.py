"""Tiny datasets written in the real on-disk formats (STL-10 binaries, Visual Decathlon
annotation JSON plus JPEGs, ImageFolder trees, COCO and VOC detection sets) and checkpoints,
for the real loaders, evaluators and examples to read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from betaweighter.data.sources.decathlon import DOMAINS
from betaweighter.models import build_model

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


# -- ImageFolder trees, checkpoints, detection sets ------------------------------------------
COLOURS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}


def write_image_folder(root: Path, per_class: dict[str, int], size: int = 16,
                       seed: int = 0) -> Path:
    """An ImageFolder of noisy flat-colour images (class = colour), PNG and JPEG mixed."""
    rng = np.random.default_rng(seed)
    for name, count in per_class.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.asarray(COLOURS[name], dtype=np.float64)
            pixels = pixels + rng.normal(0, 20, size=(size, size, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            image.save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def write_view_groups(root: Path, views: dict[str, int], size: int = 24, seed: int = 0,
                      same: bool = False) -> Path:
    """Multi-view object folders as COIL-100 / ALOI are laid out (``object/view.png``): each
    object is a random blob pattern photographed on a turntable, one PNG per 360/k degrees
    of rotation (or, with `same`, k identical copies)."""
    rng = np.random.default_rng(seed)
    for name, count in views.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        pattern = Image.fromarray(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8))
        pattern = pattern.resize((size, size), Image.BILINEAR)
        for v in range(count):
            angle = 0 if same else 360 * v // count
            pattern.rotate(angle, resample=Image.BILINEAR).save(folder / f"view_{v:03d}.png")
    return root


def write_checkpoint(path: Path, model_config: dict, seed: int = 0) -> Path:
    """A checkpoint as the experiment runner writes it (random weights)."""
    torch.manual_seed(seed)
    model = build_model(**model_config)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "model_config": model_config, "epoch": 3}, path)
    return path


def rectangles_on_noise(rng: np.random.Generator, size: int, count: int):
    """An RGB noise image with `count` coloured rectangles; returns (image, boxes, labels)
    with boxes as COCO [x, y, w, h] and labels 1 (red) or 2 (green)."""
    pixels = rng.integers(0, 80, size=(size, size, 3)).astype(np.uint8)
    boxes, labels = [], []
    for _ in range(count):
        w, h = rng.integers(size // 4, size // 2, size=2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        label = int(rng.integers(1, 3))
        pixels[y:y + h, x:x + w] = (230, 30, 30) if label == 1 else (30, 230, 30)
        boxes.append([int(x), int(y), int(w), int(h)])
        labels.append(label)
    return Image.fromarray(pixels), boxes, labels


def write_coco(root: Path, images: int = 4, size: int = 64, seed: int = 0,
               extra_annotations: list[dict] | None = None) -> tuple[Path, Path]:
    """A COCO detection set of rectangles on noise: (images dir, annotation file)."""
    rng = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [],
            "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]}
    for i in range(images):
        image, boxes, labels = rectangles_on_noise(rng, size, 2)
        image.save(image_dir / f"img{i}.png")
        coco["images"].append({"id": 100 + i, "file_name": f"img{i}.png", "width": size,
                               "height": size})
        for box, label in zip(boxes, labels):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1,
                                        "image_id": 100 + i, "category_id": label,
                                        "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    coco["annotations"] += extra_annotations or []
    ann = root / "annotations.json"
    ann.write_text(json.dumps(coco))
    return image_dir, ann


def write_voc(root: Path, objects: dict[str, list[tuple[str, int, list[int]]]],
              size: tuple[int, int] = (48, 40), split: str = "trainval") -> Path:
    """A VOC directory; `objects` maps image id -> [(class, difficult, [xmin, ymin, xmax,
    ymax] 1-based)]."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    w, h = size
    for image_id, objs in objects.items():
        Image.new("RGB", (w, h), (90, 90, 90)).save(root / "JPEGImages" / f"{image_id}.jpg")
        parts = [f"<annotation><filename>{image_id}.jpg</filename><size><width>{w}</width>"
                 f"<height>{h}</height><depth>3</depth></size>"]
        for name, difficult, (x1, y1, x2, y2) in objs:
            parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult>"
                         f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                         f"<ymax>{y2}</ymax></bndbox></object>")
        parts.append("</annotation>")
        (root / "Annotations" / f"{image_id}.xml").write_text("".join(parts))
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(objects) + "\n")
    return root


# -- Semantic and instance segmentation sets ---------------------------------------------------
SEGMENTATION_CLASSES = ("background", "red", "green")
_CLASS_COLOURS = {1: (230, 30, 30), 2: (30, 230, 30)}


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (class k's colour from the bits of k), 256 RGB entries
    flattened, as the devkit's ``VOClabelcolormap.m`` builds it."""
    palette = []
    for k in range(256):
        r = g = b = 0
        c = k
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def segmentation_scene(rng: np.random.Generator, size: tuple[int, int], objects: int = 2,
                       border: bool = True) -> tuple[Image.Image, np.ndarray]:
    """A noise image with `objects` red (class 1) or green (class 2) rectangles; returns
    (RGB image, uint8 mask of class ids) with, as in VOC, a 1-pixel 255 ("ignore") ring on
    each rectangle's outline when `border`."""
    w, h = size
    pixels = rng.integers(0, 80, size=(h, w, 3)).astype(np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    for _ in range(objects):
        bw, bh = rng.integers(w // 4, w // 2), rng.integers(h // 4, h // 2)
        x, y = rng.integers(0, w - bw), rng.integers(0, h - bh)
        label = int(rng.integers(1, 3))
        pixels[y:y + bh, x:x + bw] = _CLASS_COLOURS[label]
        if border:
            mask[y:y + bh, x:x + bw] = 255
            mask[y + 1:y + bh - 1, x + 1:x + bw - 1] = label
        else:
            mask[y:y + bh, x:x + bw] = label
    return Image.fromarray(pixels), mask


def write_voc_segmentation(root: Path, splits: dict[str, int], size: tuple[int, int] = (40, 32),
                           seed: int = 0, year: int = 2012) -> Path:
    """``root/VOCdevkit/VOC<year>`` as the devkit lays out its segmentation set: JPEG
    images, palette-PNG class masks (VOC colour map, 255 on outlines) and one id list per
    split under ``ImageSets/Segmentation``. `splits` maps a split name to its image count
    (ids continue across splits). Returns `root` (the folder holding VOCdevkit)."""
    voc = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng, palette, n = np.random.default_rng(seed), voc_palette(), 0
    for split, count in splits.items():
        ids = []
        for _ in range(count):
            image_id = f"{year}_{n:06d}"
            image, mask = segmentation_scene(rng, size)
            image.save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
            png = Image.fromarray(mask, mode="P")
            png.putpalette(palette)
            png.save(voc / "SegmentationClass" / f"{image_id}.png")
            ids.append(image_id)
            n += 1
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def write_mask_folder(root: Path, images: int, size: tuple[int, int] = (40, 32),
                      seed: int = 0) -> Path:
    """A plain image/mask folder set: ``root/images/<name>.png|jpg`` and greyscale
    ``root/masks/<name>.png`` holding class ids (SEGMENTATION_CLASSES, 255 on outlines)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        image, mask = segmentation_scene(rng, size)
        image.save(root / "images" / f"scene{i:03d}.{'png' if i % 2 else 'jpg'}")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"scene{i:03d}.png")
    return root


def write_coco_instances(root: Path, images: int = 4, size: int = 64, seed: int = 0,
                         crowd: bool = False) -> tuple[Path, Path]:
    """A COCO instance-segmentation set: red rectangles and green triangles on noise, each
    annotated with its box and its polygon (``segmentation``); with `crowd`, the first image
    also gets a crowd region as uncompressed RLE. Returns (images dir, annotation file)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [],
            "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]}
    for i in range(images):
        image = Image.fromarray(rng.integers(0, 80, size=(size, size, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for k, label in enumerate((1, 2)):
            w, h = (int(v) for v in rng.integers(size // 4, size // 2, size=2))
            x = int(rng.integers(0, size // 2 - w // 2)) + k * (size // 2)
            x = min(x, size - w)
            y = int(rng.integers(0, size - h))
            if label == 1:
                polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
            else:
                polygon = [x, y + h, x + w / 2, y, x + w, y + h]
            draw.polygon(polygon, fill=_CLASS_COLOURS[label])
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": 100 + i,
                "category_id": label, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                "segmentation": [[float(v) for v in polygon]]})
        if crowd and i == 0:  # a 4x4 square at the top left, runs down the columns
            runs = [0] + [4, size - 4] * 3 + [4, size * size - 3 * size - 4]
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": 100, "category_id": 1,
                "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 1,
                "segmentation": {"size": [size, size], "counts": runs}})
        image.save(image_dir / f"img{i}.png")
        coco["images"].append({"id": 100 + i, "file_name": f"img{i}.png", "width": size,
                               "height": size})
    ann = root / "annotations.json"
    ann.write_text(json.dumps(coco))
    return image_dir, ann
