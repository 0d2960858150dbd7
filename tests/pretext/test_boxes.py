"""Pseudo boxes: every source gives valid boxes, filters hold, the cache is hit the second
time, and a missing extra is named."""

import sys

import numpy as np
import pytest
import torch

from betaweighter.data.sources.shapes import shapes_scene
from betaweighter.pretext.boxes import PseudoBoxes, filter_boxes


def _image(seed=0, size=64):
    pixels = shapes_scene(np.random.default_rng(seed), size=size)[0]
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


def _methods():
    out = ["random"]
    try:
        import skimage  # noqa: F401
        out.append("felzenszwalb")
    except ImportError:
        pass
    try:
        import cv2
        if hasattr(cv2, "ximgproc"):
            out.append("selective_search")
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("method", _methods())
def test_sources_give_valid_filtered_boxes_and_the_cache_is_hit(method, tmp_path):
    source = PseudoBoxes(method, topk=5, min_size=6, cache_dir=tmp_path)
    image = _image()
    boxes = source(image)
    assert 1 <= len(boxes) <= 5 and boxes.dtype == torch.float32
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (w >= 6).all() and (h >= 6).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all()
    assert (source.hits, source.misses) == (0, 1)
    assert torch.equal(source(image), boxes) and (source.hits, source.misses) == (1, 1)
    again = PseudoBoxes(method, topk=5, min_size=6, cache_dir=tmp_path)  # from disk
    assert torch.equal(again(image), boxes) and again.hits == 1
    other = PseudoBoxes(method, topk=4, min_size=6, cache_dir=tmp_path)  # other settings
    assert len(other(image)) <= 4 and other.misses == 1
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_random_boxes_depend_on_the_image_and_seed_only():
    a, b = PseudoBoxes("random", seed=1), PseudoBoxes("random", seed=1)
    assert torch.equal(a(_image(0)), b(_image(0)))
    assert not torch.equal(a(_image(0)), a(_image(1)))
    assert not torch.equal(a(_image(0)), PseudoBoxes("random", seed=2)(_image(0)))


def test_copy_paste_boxes_are_exact():
    source = PseudoBoxes("copy_paste", count=1, sizes=(0.3, 0.4), min_size=4, seed=0)
    images = torch.stack([torch.zeros(3, 32, 32), torch.ones(3, 32, 32)])
    pasted, boxes = source.paste(images)
    for i in range(2):
        (x1, y1, x2, y2), = boxes[i].int().tolist()
        inside = pasted[i, :, y1:y2, x1:x2]
        assert torch.equal(inside, torch.full_like(inside, float(1 - i)))  # the other image
        outside = pasted[i].clone()
        outside[:, y1:y2, x1:x2] = float(i)
        assert torch.equal(outside, images[i])  # nothing else changed


def test_filters():
    boxes = np.array([[0, 0, 4, 40], [0, 0, 10, 10], [0, 0, 64, 64], [5, 5, 30, 20]], float)
    kept = filter_boxes(boxes, 64, 64, min_size=8, topk=1, max_area=0.9)
    np.testing.assert_array_equal(kept, [[0, 0, 10, 10]])


def test_a_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    with pytest.raises(ImportError, match=r"betaweighter\[proposals\]"):
        PseudoBoxes("felzenszwalb")
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match="opencv-contrib-python-headless"):
        PseudoBoxes("selective_search")
    with pytest.raises(ValueError, match="must be one of"):
        PseudoBoxes("edge_boxes")


def test_copy_paste_state_round_trips():
    a = PseudoBoxes("copy_paste", seed=3)
    a.paste(torch.rand(2, 3, 16, 16))
    state = a.state_dict()
    b = PseudoBoxes("copy_paste", seed=9)
    b.load_state_dict(state)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(a.paste(x)[0], b.paste(x)[0])
