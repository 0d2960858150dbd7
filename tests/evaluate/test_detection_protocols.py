"""Label-scarce subsets and few-shot (TFA) splits: reproducible, nested, exactly K."""

import math

import numpy as np
import pytest
import torch
from helpers import one_thread  # noqa: F401 (a fixture)

from betaweighter.data import SHAPE_CLASSES, load_voc, write_shapes_voc
from betaweighter.errors import DataError
from betaweighter.evaluate.detection_protocols import (
    TFA_VOC_NOVEL,
    evaluate_few_shot_detection,
    evaluate_label_scarce,
    few_shot_set,
    label_subsets,
    mean_std,
    novel_classes,
)
from betaweighter.models import build_model

TINY = dict(min_size=64, max_size=64, batch_size=2, score_threshold=0.0, device="cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_voc(root, images=30, size=64, seed=0, split="trainval")
    write_shapes_voc(root, images=4, size=64, seed=1, split="test", start=30)
    classes = list(SHAPE_CLASSES)
    return load_voc(root, "trainval", classes=classes), load_voc(root, "test", classes=classes)


def test_label_subsets_are_reproducible_per_seed_and_nested():
    a = label_subsets(1000, (0.01, 0.02, 0.05, 0.1), seed=3)
    b = label_subsets(1000, (0.01, 0.02, 0.05, 0.1), seed=3)
    assert [len(a[f]) for f in a] == [10, 20, 50, 100]
    for f in a:
        np.testing.assert_array_equal(a[f], b[f])
    assert set(a[0.01]) <= set(a[0.02]) <= set(a[0.05]) <= set(a[0.1])
    assert set(label_subsets(1000, (0.05,), seed=4)[0.05]) != set(a[0.05])
    assert len(label_subsets(30, (0.01,))[0.01]) == 1  # at least one image
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        label_subsets(10, (0.0,))


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_few_shot_sets_hold_exactly_k_instances_per_class(voc, k):
    train, _ = voc
    shots = few_shot_set(train, k, seed=0)
    counts = np.bincount(np.concatenate([r.labels for r in shots.records]), minlength=4)
    assert counts[1:].tolist() == [k, k, k]
    again = few_shot_set(train, k, seed=0)
    assert [r.file for r in again.records] == [r.file for r in shots.records]
    other = few_shot_set(train, k, seed=1)
    assert [r.file for r in other.records] != [r.file for r in shots.records]
    files = {r.file: r for r in train.records}
    for r in shots.records:  # boxes are the image's own
        full = files[r.file]
        assert all(any(np.array_equal(b, fb) for fb in full.boxes) for b in r.boxes)
    with pytest.raises(DataError, match="cannot sample exactly 500"):
        few_shot_set(train, 500)


def test_novel_classes_follow_the_tfa_splits():
    voc_classes = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
                   "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
                   "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert novel_classes(voc_classes, split=2) == list(TFA_VOC_NOVEL[2])
    assert novel_classes(list(SHAPE_CLASSES), ["disc"]) == ["disc"]
    with pytest.raises(DataError, match="not among"):
        novel_classes(list(SHAPE_CLASSES), split=1)
    with pytest.raises(DataError, match="at least one base"):
        novel_classes(list(SHAPE_CLASSES), list(SHAPE_CLASSES))


def test_mean_std():
    assert mean_std([0.1, 0.3]) == pytest.approx((0.2, math.sqrt(0.02)))
    assert mean_std([0.5, None]) == (0.5, 0.0) and mean_std([]) == (None, None)


def test_label_scarce_and_few_shot_runs_report_mean_and_std(voc):
    train, test = voc
    torch.manual_seed(0)
    backbone = build_model("resnet18")
    r = evaluate_label_scarce(backbone, train, test, fractions=[0.1], seeds=[0, 1],
                              images=2, **TINY)
    res = r["results"]["10%"]
    assert [run["images"] for run in res["runs"]] == [3, 3]
    assert res["AP"] is not None and res["AP_std"] >= 0
    for finetune in ("tfa", "direct"):
        f = evaluate_few_shot_detection(backbone, train, test, novel=["disc"], shots=[1],
                                        seeds=[0], finetune=finetune, base_images=2,
                                        images=2, **TINY)
        one = f["results"]["1-shot"]
        assert one["runs"][0]["images"] <= 3 and f["novel_classes"] == ["disc"]
        assert all(0 <= one[k] <= 1 for k in ("nAP", "nAP50", "bAP"))
