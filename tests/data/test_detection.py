"""COCO and VOC detection sets: boxes, labels, ignored and bad boxes, clear errors."""

import json

import numpy as np
import pytest
import torch

from betaweighter.data.detection import (
    collate_detection,
    concat_detection,
    load_coco,
    load_voc,
)


def test_coco_boxes_become_xyxy_with_contiguous_labels(tmp_path, coco_writer):
    images, ann = coco_writer(tmp_path, images=2, size=64)
    ds = load_coco(images, ann)
    coco = json.loads(ann.read_text())
    assert ds.classes == ["red", "green"] and len(ds) == 2
    image, target = ds[1]
    assert image.shape == (3, 64, 64) and 0.0 <= image.min() and image.max() <= 1.0
    expected = [a for a in coco["annotations"] if a["image_id"] == 101]
    xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in expected)]
    np.testing.assert_allclose(target["boxes"].numpy(), xyxy)
    assert target["labels"].tolist() == [a["category_id"] for a in expected]
    assert int(target["image_id"]) == 1
    images_, targets = collate_detection([ds[0], ds[1]])
    assert len(images_) == len(targets) == 2


def test_bad_boxes_are_clipped_or_skipped_and_counted(tmp_path, coco_writer):
    bad = [{"id": 90, "image_id": 100, "category_id": 1, "bbox": [50, 50, 30, 30]},  # overhangs
           {"id": 91, "image_id": 100, "category_id": 1, "bbox": [70, 70, 10, 10]},  # outside
           {"id": 92, "image_id": 100, "category_id": 2, "bbox": [5, 5, 0, 10]},  # no area
           {"id": 93, "image_id": 100, "category_id": 2, "bbox": [1, 1, 9, 9], "iscrowd": 1}]
    images, ann = coco_writer(tmp_path, images=1, size=64, extra_annotations=bad)
    ds = load_coco(images, ann)
    assert ds.report["clipped_boxes"] == 1
    assert ds.report["skipped_outside_image"] == 1 and ds.report["skipped_degenerate"] == 1
    assert ds.report["boxes"] == 3 and ds.report["ignored_boxes"] == 1
    _, target = ds[0]
    assert target["boxes"].shape == (3, 4)  # the crowd box is not a training target
    assert [50, 50, 64, 64] in target["boxes"].tolist()
    with pytest.raises(ValueError, match=r"annotations\.json: annotation 90: box .* outside"):
        load_coco(images, ann, on_bad_box="error")


def test_coco_errors_name_the_problem(tmp_path, coco_writer):
    images, ann = coco_writer(tmp_path, images=2)
    (images / "img1.png").unlink()
    with pytest.raises(ValueError, match=r"1 image files are missing.*img1\.png"):
        load_coco(images, ann)
    coco = json.loads(ann.read_text())
    coco["annotations"][0]["category_id"] = 7
    ann.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="unknown category 7"):
        load_coco(images, ann)
    with pytest.raises(ValueError, match="cannot read COCO annotations"):
        load_coco(images, tmp_path / "missing.json")
    coco["images"][0]["width"] = 65
    coco["annotations"][0]["category_id"] = 1
    ann.write_text(json.dumps(coco))
    (images / "img1.png").write_bytes((images / "img0.png").read_bytes())
    with pytest.raises(ValueError, match="annotation says 65x64"):
        load_coco(images, ann)[0]


def test_test_set_categories_must_be_training_classes(tmp_path, coco_writer):
    images, ann = coco_writer(tmp_path)
    assert load_coco(images, ann, classes=["green", "red", "blue"]).report[
        "classes_without_boxes"] == ["blue"]
    with pytest.raises(ValueError, match=r"categories \['red'\] are not among"):
        load_coco(images, ann, classes=["green"])


def test_voc_difficult_boxes_and_one_based_coordinates(tmp_path, voc_writer):
    root = voc_writer(tmp_path / "VOC2007", {
        "000001": [("dog", 0, [1, 1, 20, 10]), ("cat", 1, [5, 5, 30, 30])],
        "000002": [("dog", 0, [10, 10, 60, 30])],  # xmax beyond the 48-px width
    })
    ds = load_voc(root, "trainval")
    assert ds.classes[7] == "cat" and len(ds.classes) == 20  # the VOC class list
    assert ds.report["ignored_boxes"] == 1 and ds.report["clipped_boxes"] == 1
    _, target = ds[0]
    assert target["boxes"].tolist() == [[0.0, 0.0, 20.0, 10.0]]
    assert target["labels"].tolist() == [12]  # dog, 1-based
    gt = ds.coco_ground_truth()
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1, 0]
    assert gt["annotations"][2]["bbox"] == [9.0, 9.0, 39.0, 21.0]


def test_voc_custom_classes_and_errors(tmp_path, voc_writer):
    root = voc_writer(tmp_path / "v", {"a": [("widget", 0, [1, 1, 9, 9])]})
    assert load_voc(root).classes == ["widget"]
    with pytest.raises(ValueError, match="'widget' is not among the classes"):
        load_voc(root, classes=["gadget"])
    with pytest.raises(ValueError, match="split file .*test.txt does not exist"):
        load_voc(root, "test")
    (root / "Annotations" / "a.xml").write_text("<annotation>")
    with pytest.raises(ValueError, match="cannot read VOC annotation"):
        load_voc(root)


def test_flip_mirrors_boxes_and_concat_keeps_counts(tmp_path, coco_writer):
    images, ann = coco_writer(tmp_path, images=1, size=64)
    plain, flipped = load_coco(images, ann), load_coco(images, ann, hflip=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        image, target = flipped[0]
        mirrored = torch.equal(image, plain[0][0].flip(-1))
        seen.add(mirrored)
        if mirrored:
            boxes = plain[0][1]["boxes"]
            expected = torch.stack([64 - boxes[:, 2], boxes[:, 1], 64 - boxes[:, 0],
                                    boxes[:, 3]], 1)
            torch.testing.assert_close(target["boxes"], expected)
    assert seen == {True, False}
    both = concat_detection([plain, plain])
    assert len(both) == 2 and both.report["boxes"] == 2 * plain.report["boxes"]
