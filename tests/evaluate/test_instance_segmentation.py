"""Instance segmentation: COCO masks read as pycocotools reads them, flipped with their
boxes, refused when missing or of the wrong size; mask AP from pycocotools on known
predictions; Mask R-CNN end to end from an RPN pre-training checkpoint."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import yaml
from ondisk import write_checkpoint, write_coco_instances
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from betaweighter.cli import main
from betaweighter.data.detection import load_coco
from betaweighter.errors import DataError
from betaweighter.evaluate.instance_segmentation import build_mask_rcnn, score_instances
from betaweighter.experiment.evaluation import evaluate_checkpoint
from betaweighter.models import build_model
from betaweighter.pretext.rpn import RPNPretext


def test_masks_are_read_as_pycocotools_reads_them(tmp_path):
    images, annotations = write_coco_instances(tmp_path, images=2, size=48, crowd=True)
    data = load_coco(images, annotations, masks=True)
    reference = COCO(str(annotations))
    for index, image_id in enumerate((100, 101)):
        _, target = data[index]
        anns = [a for a in reference.loadAnns(reference.getAnnIds(imgIds=image_id))
                if not a["iscrowd"]]
        expected = np.stack([reference.annToMask(a) for a in anns])
        assert target["masks"].dtype == torch.uint8
        assert np.array_equal(target["masks"].numpy(), expected)
        assert len(target["boxes"]) == len(target["masks"]) == len(anns)
    gt = data.coco_ground_truth()
    crowd = [a for a in gt["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and coco_mask.decode(coco_mask.frPyObjects(
        crowd[0]["segmentation"], 48, 48)).sum() == 16
    assert "masks" not in load_coco(images, annotations)[0][1]  # detection reads boxes only


def test_a_flip_moves_masks_with_their_boxes(tmp_path):
    images, annotations = write_coco_instances(tmp_path, images=1, size=48)
    plain = load_coco(images, annotations, masks=True)[0][1]
    flipping = load_coco(images, annotations, masks=True, hflip=True)
    for seed in range(20):
        torch.manual_seed(seed)
        flipped = flipping[0][1]
        if not torch.equal(flipped["boxes"], plain["boxes"]):
            break
    else:
        pytest.fail("no flip in 20 draws at probability 1/2")
    assert torch.equal(flipped["masks"], plain["masks"].flip(-1))
    for box, mask in zip(flipped["boxes"], flipped["masks"]):
        columns = mask.any(0).nonzero().flatten()
        assert abs(float(columns.min()) - float(box[0])) <= 1
        assert abs(float(columns.max()) + 1 - float(box[2])) <= 1


def test_missing_or_misfit_masks_are_refused_naming_the_annotation(tmp_path):
    images, annotations = write_coco_instances(tmp_path, images=1, size=48)
    doc = json.loads(annotations.read_text())
    broken = copy.deepcopy(doc)
    del broken["annotations"][1]["segmentation"]
    annotations.write_text(json.dumps(broken))
    with pytest.raises(DataError, match=r"annotations.json: annotation 2: no usable "
                                        r"'segmentation'"):
        load_coco(images, annotations, masks=True)
    load_coco(images, annotations)  # boxes alone are still a detection set
    broken = copy.deepcopy(doc)
    broken["annotations"][0]["segmentation"] = {"size": [10, 10], "counts": [100]}
    annotations.write_text(json.dumps(broken))
    with pytest.raises(DataError, match="annotation 1: its RLE mask is 10x10 .* image is 48x48"):
        load_coco(images, annotations, masks=True)
    broken["annotations"][0]["segmentation"] = [[1, 2, 3, 4]]
    annotations.write_text(json.dumps(broken))
    with pytest.raises(DataError, match="annotation 1: 'segmentation' must list polygons"):
        load_coco(images, annotations, masks=True)


def _predictions(data, shift=0):
    """The ground truth itself as detections (score 1), masks moved `shift` pixels right."""
    boxes, masks = [], []
    for a in data.coco_ground_truth()["annotations"]:
        r = data.records[a["image_id"]]
        m = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(a["segmentation"],
                                                                   r.height, r.width)))
        m = np.roll(m, shift, axis=1)
        rle = coco_mask.encode(np.asfortranarray(m))
        common = {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0}
        boxes.append({**common, "bbox": a["bbox"]})
        masks.append({**common, "segmentation": {"size": rle["size"],
                                                 "counts": rle["counts"].decode()}})
    return boxes, masks


def test_mask_ap_is_one_for_the_ground_truth_and_falls_when_masks_move(tmp_path):
    data = load_coco(*write_coco_instances(tmp_path, images=3, size=48), masks=True)
    perfect = score_instances(data, *_predictions(data))
    assert perfect == {f"{kind}_{k}": pytest.approx(1.0) for kind in ("mask", "box")
                       for k in ("AP", "AP50", "AP75")}
    moved = score_instances(data, *_predictions(data, shift=4))
    assert moved["box_AP"] == pytest.approx(1.0) and moved["mask_AP"] < 0.9
    assert moved["mask_AP50"] >= moved["mask_AP75"] and moved["mask_AP"] > 0
    empty = score_instances(data, [], [])
    assert empty["mask_AP"] == 0.0 and empty["box_AP"] == 0.0


def test_mask_rcnn_shares_the_detectors_trunk_and_anchors():
    backbone = build_model("resnet18")
    model = build_mask_rcnn(backbone, 2, trainable_layers=1, min_size=64, max_size=96,
                            rois_per_image=64)
    assert model.roi_heads.has_mask() and model.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    torch.testing.assert_close(model.backbone.body.layer2[0].conv1.weight,
                               backbone.encoder.layer2[0].conv1.weight)
    stages = {n.split(".")[0] for n, p in model.backbone.body.named_parameters()
              if p.requires_grad}
    assert stages == {"layer4"}


def _config(tmp_path, **section):
    path = tmp_path / "inst.yaml"
    path.write_text(yaml.safe_dump({"evaluate": {"instance_segmentation": section}}))
    return path


def test_instance_segmentation_end_to_end_from_an_rpn_checkpoint(tmp_path):
    write_coco_instances(tmp_path / "train", images=2, size=64, seed=0, crowd=True)
    write_coco_instances(tmp_path / "test", images=1, size=64, seed=1)
    torch.manual_seed(0)
    ckpt = RPNPretext(build_model("resnet18")).save_detector_init(tmp_path / "rpn.pt")
    config = _config(tmp_path, init="rpn", images=2, batch_size=2, min_size=[64], max_size=64,
                     score_threshold=0.0, detections_per_image=10, rois_per_image=64,
                     data={"train": {"images": "train/images",
                                     "annotations": "train/annotations.json"},
                           "test": {"images": "test/images",
                                    "annotations": "test/annotations.json"}})
    out = evaluate_checkpoint(ckpt, "instance_segmentation", config, device="cpu")
    saved = json.loads((tmp_path / "eval_instance_segmentation.json").read_text())
    r = saved["result"]
    assert r == json.loads(json.dumps(out["result"]))
    assert r["training"]["iterations"] == 1 and r["trainable_layers"] == 3
    assert r["init"]["loaded"]["rpn.head"] > 0 and r["init"]["loaded"]["backbone.fpn"] > 0
    assert r["init"]["fresh"] == ["roi_heads.box_head", "roi_heads.box_predictor",
                                  "roi_heads.mask_head", "roi_heads.mask_predictor"]
    assert r["train_data"]["ignored_boxes"] == 1 and r["test_data"]["images"] == 1
    for key in ("mask_AP", "mask_AP50", "mask_AP75", "box_AP", "box_AP50", "box_AP75"):
        assert math.isfinite(r[key]) and 0.0 <= r[key] <= 1.0
    assert 0 < r["detections"] <= 10
    assert saved["config"]["anchor_sizes"] == [32, 64, 128, 256, 512]  # the checkpoint's


def test_instance_segmentation_refusals_are_one_line(tmp_path, capsys):
    convnet = write_checkpoint(tmp_path / "conv.pt", {"name": "convnet", "width": 4,
                                                      "blocks": 1})
    resnet = write_checkpoint(tmp_path / "r18.pt", {"name": "resnet18"})
    sources = {"train": {"images": "i", "annotations": "a.json"},
               "test": {"images": "i", "annotations": "a.json"}}
    for ckpt, section, message in [
            (convnet, {"data": sources}, "--task instance_segmentation: detection transfer "
                                         "needs a torchvision ResNet"),
            (resnet, {"data": {"train": {"images": "i"}}},
             "'evaluate.instance_segmentation.data.train.annotations' is required"),
            (resnet, {"data": sources, "init": "rpn"}, "holds no detector initialisation"),
            (resnet, {"data": {"train": {"images": "i", "root": "r"}}},
             "unknown config key 'evaluate.instance_segmentation.data.train.root'")]:
        if section.get("init") == "rpn":
            write_coco_instances(tmp_path / "set", images=1, size=32)
            section["data"] = {s: {"images": "set/images", "annotations":
                                   "set/annotations.json"} for s in ("train", "test")}
        code = main(["evaluate", str(ckpt), "--task", "instance_segmentation",
                     str(_config(tmp_path, **section)), "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, err
