"""COCO AP and VOC07 AP50 on hand-made ground truth and detections."""

import pytest

from betaweighter.evaluate.detection_metrics import coco_box_metrics, voc07_detection_ap


def _gt(boxes_per_image, crowd=()):
    images, anns = [], []
    for i, boxes in enumerate(boxes_per_image):
        images.append({"id": i, "width": 100, "height": 100})
        for cat, box in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat,
                         "bbox": list(box), "area": box[2] * box[3],
                         "iscrowd": int(len(anns) in crowd)})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


GT = _gt([[(1, (10, 10, 30, 30)), (2, (50, 50, 40, 20))],
          [(1, (5, 60, 20, 30))],
          [(2, (20, 20, 50, 50)), (1, (70, 5, 20, 20))]])


def _dets(gt, shift=0.0, score=0.9):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": score,
             "bbox": [a["bbox"][0] + shift * a["bbox"][2], a["bbox"][1], a["bbox"][2],
                      a["bbox"][3]]} for a in gt["annotations"]]


def test_predictions_equal_to_ground_truth_give_ap_one():
    m = coco_box_metrics(GT, _dets(GT))
    assert m == {"AP": pytest.approx(1.0), "AP50": pytest.approx(1.0),
                 "AP75": pytest.approx(1.0)}
    assert voc07_detection_ap(GT, _dets(GT))["mAP"] == pytest.approx(1.0)


def test_shifted_boxes_lower_ap75_before_ap50():
    # a horizontal shift by 20 % of the width gives IoU 0.8 / 1.2 = 0.667: above 0.5, below 0.75
    m = coco_box_metrics(GT, _dets(GT, shift=0.2))
    assert m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(0.0)
    assert 0.0 < m["AP"] < 0.5
    assert voc07_detection_ap(GT, _dets(GT, shift=0.2))["mAP"] == pytest.approx(1.0)
    # a shift of 60 % (IoU 0.25) loses AP50 too
    far = _dets(GT, shift=0.6)
    assert coco_box_metrics(GT, far)["AP50"] == pytest.approx(0.0)
    assert voc07_detection_ap(GT, far)["mAP"] == pytest.approx(0.0)


def test_duplicates_and_false_positives_lower_voc_ap():
    dets = _dets(GT, score=0.9) + [{"image_id": 1, "category_id": 2, "score": 0.95,
                                    "bbox": [0, 0, 10, 10]}]
    r = voc07_detection_ap(GT, dets)
    # class b: the false positive ranks first, so precision is 1/2 then 2/3 at full recall
    assert r["per_class"]["a"] == pytest.approx(1.0)
    assert r["per_class"]["b"] == pytest.approx(2 / 3)
    dup = _dets(GT) + _dets(GT, score=0.5)  # duplicates rank below every true positive
    assert voc07_detection_ap(GT, dup)["mAP"] == pytest.approx(1.0)


def test_crowd_or_difficult_boxes_are_ignored():
    gt = _gt([[(1, (10, 10, 30, 30)), (1, (60, 60, 30, 30))]], crowd={1})
    hit_ignored = [{"image_id": 0, "category_id": 1, "score": 0.99, "bbox": [60, 60, 30, 30]},
                   {"image_id": 0, "category_id": 1, "score": 0.5, "bbox": [10, 10, 30, 30]}]
    assert voc07_detection_ap(gt, hit_ignored)["per_class"]["a"] == pytest.approx(1.0)
    assert coco_box_metrics(gt, hit_ignored)["AP50"] == pytest.approx(1.0)


def test_empty_cases():
    assert coco_box_metrics(GT, []) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    r = voc07_detection_ap(_gt([[(1, (10, 10, 30, 30))]]), [])
    assert r["per_class"] == {"a": 0.0} and r["classes_without_ground_truth"] == ["b"]
    assert coco_box_metrics(_gt([[]]), [])["AP"] is None
