"""Tiny on-disk datasets and checkpoints for the evaluator tests (generated, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from betaweighter.models import build_model

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


@pytest.fixture
def colour_folders(tmp_path: Path) -> dict[str, Path]:
    """train/val/test ImageFolders with three colour classes."""
    counts = {"blue": 8, "green": 8, "red": 8}
    return {"train": write_image_folder(tmp_path / "data" / "train", counts, seed=1),
            "val": write_image_folder(tmp_path / "data" / "val", {k: 4 for k in counts}, seed=2),
            "test": write_image_folder(tmp_path / "data" / "test", {k: 5 for k in counts},
                                       seed=3)}


TINY_CONVNET = {"name": "convnet", "num_classes": 4, "width": 8, "blocks": 2}


@pytest.fixture(autouse=True)
def _single_threaded():
    """These tensors are tiny: with several threads (on a shared, loaded machine) the
    hand-offs cost up to 100x the work itself, so every test runs on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture
def image_folder_writer():
    return write_image_folder


@pytest.fixture
def checkpoint_writer():
    return write_checkpoint


@pytest.fixture
def coco_writer():
    return write_coco


@pytest.fixture
def voc_writer():
    return write_voc


@pytest.fixture
def tiny_convnet() -> dict:
    return dict(TINY_CONVNET)
