"""The generated shapes set: VOC and COCO files with the exact boxes, and the pre-training
bundle."""

import numpy as np
import pytest
import torch

from betaweighter.data import SHAPE_CLASSES, load_coco, load_voc, shapes
from betaweighter.data.sources.shapes import (
    _scenes,
    shapes_scene,
    write_shapes_coco,
    write_shapes_voc,
)


def test_a_scene_box_is_the_exact_extent_of_its_shape():
    pixels, boxes, labels = shapes_scene(np.random.default_rng(3), size=64)
    assert len(boxes) >= 1 and set(labels) <= {1, 2, 3}
    background = shapes_scene(np.random.default_rng(3), size=64)[0]
    np.testing.assert_array_equal(pixels, background)  # seeded: the same scene again
    for x1, y1, x2, y2 in boxes.astype(int):
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64


def test_voc_and_coco_files_hold_the_generated_boxes(tmp_path):
    write_shapes_voc(tmp_path / "voc", images=5, size=64, seed=2, split="trainval")
    write_shapes_voc(tmp_path / "voc", images=3, size=64, seed=3, split="test", start=5)
    voc = load_voc(tmp_path / "voc", "trainval", classes=list(SHAPE_CLASSES), on_bad_box="error")
    test = load_voc(tmp_path / "voc", "test", classes=list(SHAPE_CLASSES))
    assert len(voc) == 5 and len(test) == 3
    for (_, boxes, labels), record in zip(_scenes(5, 64, 2, 1), voc.records):
        np.testing.assert_array_equal(record.boxes, boxes)  # 1-based corners undone exactly
        np.testing.assert_array_equal(record.labels, labels)
    images, annotations = write_shapes_coco(tmp_path / "coco", images=4, size=64, seed=2)
    coco = load_coco(images, annotations, on_bad_box="error")
    assert coco.classes == list(SHAPE_CLASSES)
    for (pixels, boxes, _), k in zip(_scenes(4, 64, 2, 0), range(4)):
        image, target = coco[k]
        torch.testing.assert_close(target["boxes"], torch.from_numpy(boxes))
        assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)


def test_the_bundle_mixes_scenes_and_distractors():
    b = shapes(pool_images=10, distractor_ratio=0.5, image_size=32, target_scenes=12,
               detection_target_images=3)
    assert len(b.pool) == 15 and int(b.in_domain.sum()) == 10
    x, i = b.pool[4]
    assert x.shape == (3, 32, 32) and i == 4
    image, target = b.detection_target[0]
    assert image.shape == (3, 32, 32) and target["boxes"].shape[1] == 4
    assert len(b.target_train) > 0 and set(b.target_train.targets) <= {0, 1, 2}
    with pytest.raises(ValueError, match="pool_images: 0 is out of range"):
        shapes(pool_images=0)
