"""Object-detection datasets from COCO JSON or Pascal VOC XML, checked when loaded.

Both formats become one `DetectionDataset`: per image a file, its size, boxes in pixel
(x1, y1, x2, y2), labels 1..K (0 is the detector's background) and an ``ignore`` flag
(COCO ``iscrowd``, VOC ``difficult``: left out of training, ignored by the metrics).

Bad annotations are never passed on silently. With ``on_bad_box="skip"`` (default) a box
partly outside its image is clipped to the image, and a box entirely outside it or with
no area is dropped; both are counted in `DetectionDataset.report`. ``on_bad_box="error"``
raises instead. A missing image file, an annotation naming an unknown image or category,
and an image whose real size differs from the annotation's are errors.

``load_coco(..., masks=True)`` also keeps each box's COCO ``segmentation`` (polygons or
RLE, checked when loaded): the items then carry ``masks`` for Mask R-CNN, and the ground
truth carries the segmentations for pycocotools' ``segm`` metric.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from betaweighter.data.coco_masks import check_segmentation, decode_segmentation
from betaweighter.data.images import read_image
from betaweighter.errors import CorruptDatasetError, DataError

__all__ = ["BAD_BOX_POLICIES", "VOC_CLASSES", "collate_detection", "concat_detection",
           "DetectionDataset", "DetectionRecord", "load_coco", "load_voc"]

__all__ = ["BAD_BOX_POLICIES", "VOC_CLASSES", "collate_detection", "concat_detection",
           "DetectionDataset", "DetectionRecord", "load_coco", "load_voc"]

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")
BAD_BOX_POLICIES = ("skip", "error")


@dataclass
class DetectionRecord:
    """One image: its file, size and boxes (xyxy pixels), labels (1..K), ignore flags, and
    (instance segmentation only) one COCO ``segmentation`` per box."""

    file: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    segmentations: list | None = None


class DetectionDataset(Dataset):
    """Yields ``(image, target)``: a float CHW image in [0, 1] and a dict with ``boxes``
    (float32 xyxy), ``labels`` (int64, 1..K) and ``image_id`` (the item index), as
    torchvision detectors expect, plus ``masks`` (uint8, one (H, W) mask per box) when the
    records carry segmentations. Ignored boxes are not in the target; `hflip` flips each
    image (and its boxes and masks) with probability 1/2, for training."""

    def __init__(self, records: list[DetectionRecord], classes: list[str],
                 report: dict[str, Any] | None = None, hflip: bool = False) -> None:
        self.records, self.classes, self.hflip = records, list(classes), hflip
        self.report = dict(report or {})
        kept = Counter(int(c) for r in records for c in r.labels[~r.ignore])
        self.report.update({
            "images": len(records),
            "boxes": int(sum(kept.values())),
            "ignored_boxes": int(sum(int(r.ignore.sum()) for r in records)),
            "classes_without_boxes": [n for k, n in enumerate(self.classes, 1) if not kept[k]],
        })

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        r = self.records[index]
        pixels = read_image(r.file)
        if tuple(pixels.shape[1:]) != (r.height, r.width):
            raise CorruptDatasetError(r.file, f"the image is {pixels.shape[2]}x{pixels.shape[1]} "
                                     f"pixels but its annotation says {r.width}x{r.height}",
                                      "Fix the annotation.")
        image = pixels.float().div_(255.0)
        keep = ~r.ignore
        boxes = torch.as_tensor(r.boxes[keep], dtype=torch.float32).reshape(-1, 4)
        masks = None
        if r.segmentations is not None:
            kept = [decode_segmentation(s, r.height, r.width)
                    for s, k in zip(r.segmentations, keep) if k]
            masks = torch.from_numpy(np.stack(kept) if kept
                                     else np.zeros((0, r.height, r.width), np.uint8))
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes = torch.stack([r.width - boxes[:, 2], boxes[:, 1],
                                 r.width - boxes[:, 0], boxes[:, 3]], dim=1)
            masks = None if masks is None else masks.flip(-1)
        labels = torch.as_tensor(r.labels[keep], dtype=torch.int64)
        target = {"boxes": boxes, "labels": labels, "image_id": torch.tensor(index)}
        if masks is not None:
            target["masks"] = masks
        return image, target

    def coco_ground_truth(self) -> dict[str, Any]:
        """The ground truth as a COCO-format dict (image id = item index, category id =
        label 1..K, ``iscrowd`` = ignore flag, ``segmentation`` when the records carry
        one), for pycocotools and the VOC07 metric."""
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for i, r in enumerate(self.records):
            images.append({"id": i, "width": r.width, "height": r.height,
                           "file_name": str(r.file)})
            for k, (box, label, ign) in enumerate(zip(r.boxes, r.labels, r.ignore)):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append({"id": len(annotations) + 1, "image_id": i,
                                    "category_id": int(label), "iscrowd": int(ign),
                                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                                    "area": (x2 - x1) * (y2 - y1)})
                if r.segmentations is not None:
                    annotations[-1]["segmentation"] = r.segmentations[k]
        categories = [{"id": k, "name": n} for k, n in enumerate(self.classes, 1)]
        return {"images": images, "annotations": annotations, "categories": categories}


def collate_detection(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[list, list]:
    """Batch detection items as (list of images, list of targets)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def concat_detection(datasets: list[DetectionDataset]) -> DetectionDataset:
    """One dataset holding the images of several (e.g. VOC2007 + VOC2012 trainval)."""
    first = datasets[0]
    for d in datasets[1:]:
        if d.classes != first.classes:
            raise DataError(f"cannot concatenate detection sets with different classes: "
                             f"{first.classes} and {d.classes}")
    report: Counter = Counter()
    for d in datasets:
        report.update({k: v for k, v in d.report.items() if k in _COUNTS})
    return DetectionDataset([r for d in datasets for r in d.records], first.classes,
                            dict(report), hflip=first.hflip)


_COUNTS = ("clipped_boxes", "skipped_outside_image", "skipped_degenerate")


class _BoxChecker:
    """Clips or drops boxes that do not fit their image, counting what it did."""

    def __init__(self, policy: str, source: Path) -> None:
        if policy not in BAD_BOX_POLICIES:
            raise DataError(f"on_bad_box must be one of {BAD_BOX_POLICIES}, got {policy!r}")
        self.policy, self.source = policy, source
        self.counts = dict.fromkeys(_COUNTS, 0)

    def __call__(self, box: list[float], width: int, height: int,
                 where: str) -> list[float] | None:
        x1, y1, x2, y2 = box
        if not (np.isfinite(box).all() and x2 > x1 and y2 > y1):
            self._bad("skipped_degenerate", f"{where}: box {box} has no area")
            return None
        c = [min(max(x1, 0.0), width), min(max(y1, 0.0), height),
             min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
        if not (c[2] > c[0] and c[3] > c[1]):
            self._bad("skipped_outside_image",
                      f"{where}: box {box} lies outside the {width}x{height} image")
            return None
        if c != [x1, y1, x2, y2]:
            self._bad("clipped_boxes", f"{where}: box {box} extends outside the "
                                      f"{width}x{height} image")
        return c

    def _bad(self, kind: str, message: str) -> None:
        """Raise under the "error" policy, else count one box of this kind."""
        if self.policy == "error":
            raise DataError(f"{self.source}: {message} (on_bad_box='skip' clips boxes that "
                             "overhang and drops boxes outside the image, counting both)")
        self.counts[kind] += 1
        return None


def load_coco(images_dir: str | Path, annotation_file: str | Path, *,
              classes: list[str] | None = None, on_bad_box: str = "skip",
              hflip: bool = False, masks: bool = False) -> DetectionDataset:
    """A COCO-format detection set: ``annotation_file`` (JSON with ``images``,
    ``annotations`` with ``bbox`` = [x, y, w, h], ``categories``) and its images under
    ``images_dir``. Labels follow `classes` (category names; default: the categories
    sorted by id). With `masks`, every annotation must also carry a ``segmentation``
    (polygons or RLE), kept beside its box."""
    ann_path, root = Path(annotation_file), Path(images_dir)
    try:
        coco = json.loads(ann_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read COCO annotations {ann_path}: {err}") from err
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{ann_path} is not a COCO detection file: no {key!r} list")
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    classes = list(names if classes is None else classes)
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DataError(f"{ann_path}: categories {unknown} are not among the classes "
                         f"{classes} of the training set")
    label_of = {c["id"]: classes.index(c["name"]) + 1 for c in cats}
    check = _BoxChecker(on_bad_box, ann_path)
    images = {im["id"]: (root / im["file_name"], int(im["width"]), int(im["height"]))
              for im in coco["images"]}
    per_image: dict[Any, list] = {k: [] for k in images}
    for ann in coco["annotations"]:
        where = f"annotation {ann.get('id')}"
        if ann.get("image_id") not in images:
            raise DataError(f"{ann_path}: {where} refers to unknown image {ann.get('image_id')}")
        if ann.get("category_id") not in label_of:
            raise DataError(f"{ann_path}: {where} has unknown category {ann.get('category_id')}")
        _, w, h = images[ann["image_id"]]
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        if masks:
            check_segmentation(ann.get("segmentation"), h, w, f"{ann_path}: {where}")
        box = check([x, y, x + bw, y + bh], w, h, where)
        if box is not None:
            per_image[ann["image_id"]].append((box, label_of[ann["category_id"]],
                                               bool(ann.get("iscrowd", 0)),
                                               ann.get("segmentation")))
    records = [_record(f, w, h, per_image[k], masks) for k, (f, w, h) in images.items()]
    _check_files(records, ann_path)
    return DetectionDataset(records, classes, check.counts, hflip=hflip)


def load_voc(root: str | Path, split: str = "trainval", *, classes: list[str] | None = None,
             on_bad_box: str = "skip", hflip: bool = False) -> DetectionDataset:
    """A Pascal VOC detection set: ``root/ImageSets/Main/<split>.txt`` lists image ids,
    ``root/Annotations/<id>.xml`` holds the boxes (1-based pixel corners, converted to
    0-based xyxy as detectron2 does) and ``root/JPEGImages/<id>.jpg`` the images.
    `classes` defaults to the 20 VOC classes, or to the sorted names found when some are
    not VOC classes."""
    root = Path(root)
    list_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not list_file.is_file():
        raise DataError(f"VOC split file {list_file} does not exist; check 'root' and 'split'")
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    parsed = [_parse_voc_xml(root / "Annotations" / f"{i}.xml") for i in ids]
    if classes is None:
        found = {o[0] for p in parsed for o in p[3]}
        classes = list(VOC_CLASSES) if found <= set(VOC_CLASSES) else sorted(found)
    check = _BoxChecker(on_bad_box, list_file)
    records = []
    for i, (file_name, w, h, objects) in zip(ids, parsed):
        boxes = []
        for k, (name, difficult, box) in enumerate(objects):
            if name not in classes:
                raise DataError(f"{root / 'Annotations' / f'{i}.xml'}: object class {name!r} "
                                f"is not among the classes {classes}")
            kept = check(box, w, h, f"image {i} object {k}")
            if kept is not None:
                boxes.append((kept, classes.index(name) + 1, difficult))
        image = root / "JPEGImages" / f"{i}.jpg"
        if not image.is_file() and file_name:
            image = root / "JPEGImages" / file_name
        records.append(_record(image, w, h, boxes))
    _check_files(records, list_file)
    return DetectionDataset(records, classes, check.counts, hflip=hflip)


def _parse_voc_xml(path: Path) -> tuple[str, int, int, list[tuple[str, bool, list[float]]]]:
    try:
        tree = ET.parse(path).getroot()
        # Any: a missing element or value raises AttributeError or TypeError, caught below
        size: Any = tree.find("size")
        w, h = int(size.findtext("width")), int(size.findtext("height"))
        objects = []
        found: list[Any] = tree.findall("object")
        for obj in found:
            bb = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(bb.findtext(t)) for t in
                                      ("xmin", "ymin", "xmax", "ymax"))
            objects.append((obj.findtext("name").strip(), obj.findtext("difficult", "0")
                            .strip() == "1", [xmin - 1.0, ymin - 1.0, xmax, ymax]))
    except (OSError, ET.ParseError, AttributeError, TypeError, ValueError) as err:
        raise DataError(f"cannot read VOC annotation {path}: {err}") from err
    return tree.findtext("filename", ""), w, h, objects


def _record(file: Path, width: int, height: int, boxes: list,
            masks: bool = False) -> DetectionRecord:
    return DetectionRecord(
        file=file, width=width, height=height,
        boxes=np.asarray([b[0] for b in boxes], dtype=np.float32).reshape(-1, 4),
        labels=np.asarray([b[1] for b in boxes], dtype=np.int64),
        ignore=np.asarray([b[2] for b in boxes], dtype=bool),
        segmentations=[b[3] for b in boxes] if masks else None)


def _check_files(records: list[DetectionRecord], source: Path) -> None:
    missing = [str(r.file) for r in records if not r.file.is_file()]
    if missing:
        raise DataError(f"{source}: {len(missing)} image files are missing, e.g. "
                         f"{missing[:3]}; check the images directory")
    if not records:
        raise DataError(f"{source} lists no images")
