"""Semantic segmentation: the confusion-matrix metric against hand counts and sklearn, the
VOC and mask-folder readers on files in their real layouts, the spatial trunk (dilation
equal to torchvision's), a frozen backbone left untouched by training, and the task end to
end through the command line."""

import json
import re

import numpy as np
import pytest
import torch
import torchvision
import yaml
from ondisk import (
    SEGMENTATION_CLASSES,
    segmentation_scene,
    write_checkpoint,
    write_mask_folder,
    write_voc_segmentation,
)
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import jaccard_score
from torchvision import tv_tensors

from betaweighter.cli import main
from betaweighter.data.segmentation import (
    IGNORE_INDEX,
    VOC_SEGMENTATION_CLASSES,
    load_mask_folder,
    load_voc_segmentation,
    segmentation_transform,
)
from betaweighter.errors import CorruptDatasetError, DatasetNotFoundError
from betaweighter.evaluate.dense import spatial_trunk
from betaweighter.evaluate.fusion import FusedBackbone
from betaweighter.evaluate.segmentation import build_segmenter, train_segmenter
from betaweighter.evaluate.segmentation_metrics import confusion_matrix, segmentation_scores
from betaweighter.models import build_model

TINY = {"name": "convnet", "num_classes": 4, "width": 16, "blocks": 2}


# -- the metric ------------------------------------------------------------------------------
def test_confusion_matrix_and_scores_match_hand_counts_and_sklearn():
    truth = torch.tensor([[0, 0, 1, 1, 255], [2, 2, 1, 0, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 2], [2, 0, 1, 0, 3]])
    c = confusion_matrix(truth, pred, 4)
    # rows: truth 0 (3 px: 0,1,0), 1 (3 px: all 1), 2 (2 px: 2,0), 3 (none); 255 ignored
    expected = torch.tensor([[2, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(c, expected)
    keep = truth != IGNORE_INDEX
    assert np.array_equal(c.numpy(), sk_confusion(truth[keep], pred[keep], labels=range(4)))
    s = segmentation_scores(c, ["a", "b", "c", "d"])
    # IoU: a 2/(3+3-2) = 1/2, b 3/(3+4-3) = 3/4, c 1/(2+1-1) = 1/2, d: no pixels at all
    assert s["per_class_iou"] == {"a": 0.5, "b": 0.75, "c": 0.5, "d": None}
    assert s["classes_without_pixels"] == ["d"]
    assert s["mIoU"] == pytest.approx((0.5 + 0.75 + 0.5) / 3)
    ref = jaccard_score(truth[keep], pred[keep], labels=[0, 1, 2], average=None)
    assert [s["per_class_iou"][k] for k in "abc"] == pytest.approx(ref.tolist())
    assert s["pixel_accuracy"] == pytest.approx(6 / 8) and s["labelled_pixels"] == 8
    assert s["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)


def test_a_class_predicted_but_never_true_scores_zero_and_labels_are_checked():
    s = segmentation_scores(confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), 2),
                            ["a", "b"])
    assert s["per_class_iou"] == {"a": 0.5, "b": 0.0} and s["mIoU"] == 0.25
    with pytest.raises(ValueError, match="true labels must be 0..1"):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 2)
    empty = segmentation_scores(torch.zeros(2, 2, dtype=torch.int64), ["a", "b"])
    assert empty["mIoU"] is None and empty["pixel_accuracy"] is None


# -- the readers -----------------------------------------------------------------------------
def test_voc_reader_reads_the_palette_masks_as_class_ids(tmp_path):
    root = write_voc_segmentation(tmp_path, {"train": 3, "val": 2})
    train = load_voc_segmentation(root, "train")
    assert len(train) == 3 and train.classes == list(VOC_SEGMENTATION_CLASSES)
    image, mask = train[1]
    _, png = train.pairs[1]
    with Image.open(png) as p:
        assert p.mode == "P"
        assert np.array_equal(mask.numpy(), np.asarray(p))
    assert image.shape == (3, 32, 40) and image.dtype == torch.uint8
    assert set(mask.unique().tolist()) <= {0, 1, 2, 255} and (mask == 255).any()
    same = load_voc_segmentation(root / "VOCdevkit" / "VOC2012", "val")  # detection's form
    assert [p[0].name for p in same.pairs] == ["2012_000003.jpg", "2012_000004.jpg"]
    with pytest.raises(DatasetNotFoundError, match="VOC2012.*holds VOCdevkit"):
        load_voc_segmentation(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetNotFoundError, match="trainval.txt"):
        load_voc_segmentation(root, "trainval")


def test_mask_folder_reader_and_its_errors_name_the_file(tmp_path):
    root = write_mask_folder(tmp_path / "set", 4)
    data = load_mask_folder(root, SEGMENTATION_CLASSES)
    assert len(data) == 4 and data.report == {"images": 4, "masks_without_images": 0}
    _, mask = data[0]
    assert torch.equal(mask, torch.from_numpy(np.array(Image.open(root / "masks" /
                                                                   "scene000.png"))).long())
    (root / "masks" / "scene002.png").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        load_mask_folder(root, SEGMENTATION_CLASSES)
    assert "scene002.png" in str(err.value) and "\n" not in str(err.value)
    Image.new("L", (12, 9)).save(root / "masks" / "scene002.png")
    with pytest.raises(CorruptDatasetError, match=r"scene002.png: the mask is 12x9 pixels but "
                                                  r"its image .*scene002.jpg is 40x32"):
        load_mask_folder(root, SEGMENTATION_CLASSES)
    Image.new("L", (40, 32), 7).save(root / "masks" / "scene002.png")
    data = load_mask_folder(root, SEGMENTATION_CLASSES)
    with pytest.raises(CorruptDatasetError, match=r"scene002.png: mask values \[7\] are not "):
        data[2]
    Image.new("RGB", (40, 32)).save(root / "masks" / "scene002.png")
    with pytest.raises(CorruptDatasetError, match="RGB mask holds colours"):
        data[2]


def test_the_training_transform_keeps_image_and_mask_aligned():
    image, mask = segmentation_scene(np.random.default_rng(0), (40, 32), border=False)
    t = segmentation_transform([0.0] * 3, [1.0] * 3, crop=48, scale_range=(1.0, 1.5))
    torch.manual_seed(0)
    for _ in range(5):
        x, m = t(tv_tensors.Image(torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())),
                 tv_tensors.Mask(torch.from_numpy(mask).long()))
        assert x.shape == (3, 48, 48) and m.shape == (48, 48) and x.dtype == torch.float32
        red = (x[0] > 0.8) & (x[1] < 0.2)
        assert (m[red] == 1).float().mean() > 0.9  # red pixels are class 1 after resizing
        assert ((m == 255) == (x.abs().sum(0) == 0)).float().mean() > 0.99  # padding
    test = segmentation_transform([0.0] * 3, [1.0] * 3, size=16)
    x, m = test(tv_tensors.Image(torch.zeros(3, 32, 40, dtype=torch.uint8)),
                tv_tensors.Mask(torch.zeros(32, 40, dtype=torch.int64)))
    assert x.shape == (3, 16, 20) and m.shape == (32, 40)  # scored at the mask's own size


# -- the spatial trunk and the segmenter -----------------------------------------------------
@pytest.mark.parametrize("stride, dilate", [(8, [False, True, True]), (16, [False, False, True])])
def test_dilated_trunk_equals_torchvisions_dilated_resnet(stride, dilate):
    torch.manual_seed(0)
    backbone = build_model("resnet50").eval()
    trunk = spatial_trunk(backbone, stride)
    reference = torchvision.models.resnet50(replace_stride_with_dilation=dilate)
    reference.fc = torch.nn.Identity()
    reference.load_state_dict(backbone.encoder.state_dict())
    body = torch.nn.Sequential(*list(reference.eval().children())[:-2])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(trunk.module.eval()(x), body(x))
    assert (trunk.channels, trunk.stride) == (2048, stride)
    assert backbone.encoder.layer4[0].conv2.stride == (2, 2)  # the backbone is untouched


def test_conv_net_trunk_and_refusals():
    trunk = spatial_trunk(build_model(**TINY))
    assert (trunk.channels, trunk.stride) == (16, 4)
    assert trunk.module(torch.randn(1, 3, 32, 32)).shape == (1, 16, 8, 8)
    with pytest.raises(ValueError, match="output_stride 8 needs a ResNet"):
        spatial_trunk(build_model(**TINY), 8)
    with pytest.raises(TypeError, match="fused backbone"):
        spatial_trunk(FusedBackbone([build_model(**TINY), build_model(**TINY)]))
    other = torch.nn.Module()
    other.encoder = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="this checkpoint's encoder is a Linear"):
        spatial_trunk(other)


def _toy_sets(tmp_path):
    train = load_mask_folder(write_mask_folder(tmp_path / "train", 8, seed=0),
                             SEGMENTATION_CLASSES)
    test = load_mask_folder(write_mask_folder(tmp_path / "test", 4, seed=1),
                            SEGMENTATION_CLASSES)
    return train, test


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_frozen_training_leaves_the_backbone_alone_and_finetuning_does_not(tmp_path, mode):
    train, _ = _toy_sets(tmp_path)
    torch.manual_seed(0)
    backbone = build_model(**TINY)
    before = {k: v.clone() for k, v in backbone.encoder.state_dict().items()}
    model = build_segmenter(backbone, 3, backbone_mode=mode)
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    t = segmentation_transform([0.5] * 3, [0.25] * 3, crop=32)
    log = train_segmenter(model, train.with_transform(t), images=12, batch_size=4, lr=0.1,
                          device="cpu")
    assert log["iterations"] == 3
    trunk = model.trunk.state_dict()
    same = all(torch.equal(trunk[k], before[k]) for k in trunk)  # weights and BN statistics
    assert same == (mode == "frozen")
    assert not all(torch.equal(v, head[k]) for k, v in model.head.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in backbone.encoder.state_dict().items())
    assert model.trunk.training == (mode == "finetune") and model.head.training


def test_the_score_follows_the_seed_not_the_global_random_state(tmp_path):
    """The head is initialised from `seed`: a suite cell recomputed in a fresh process (any
    global random state) gives the same numbers."""
    from betaweighter.evaluate.segmentation import evaluate_segmentation

    train, test = _toy_sets(tmp_path)
    backbone = build_model(**TINY)
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        results.append(evaluate_segmentation(backbone, train, test, crop_size=32, images=8,
                                             batch_size=4, mean=[0.5] * 3, std=[0.25] * 3,
                                             device="cpu", seed=3))
    assert results[0]["confusion_matrix"] == results[1]["confusion_matrix"]
    losses = [{k: v for k, v in r["training"].items() if k != "seconds"} for r in results]
    assert losses[0] == losses[1]


# -- end to end ------------------------------------------------------------------------------
def _cli_config(tmp_path, **section):
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump({"evaluate": {"segmentation": section}}))
    return str(path)


def test_segmentation_task_end_to_end_on_mask_folders(tmp_path, capsys):
    write_mask_folder(tmp_path / "train", 8, seed=0)
    write_mask_folder(tmp_path / "test", 4, seed=1)
    ckpt = write_checkpoint(tmp_path / "ckpt.pt", TINY)
    config = _cli_config(tmp_path, backbone="frozen", images=240, batch_size=4, lr=0.1,
                         image_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                         data={"format": "folders", "train": "train", "test": "test",
                               "classes": list(SEGMENTATION_CLASSES)})
    assert main(["evaluate", str(ckpt), "--task", "segmentation", config, "--device",
                 "cpu"]) == 0
    saved = json.loads((tmp_path / "eval_segmentation.json").read_text())
    r = saved["result"]
    assert saved["task"] == "segmentation" and saved["config"]["image_size"] == 32
    assert r["training"]["iterations"] == 60 and r["backbone"] == "frozen"
    assert r["output_stride"] == 4 and r["test_data"]["images"] == 4
    # all-background would score mIoU 0.28 here: the head learns colour -> class
    assert r["mIoU"] > 0.7 and r["pixel_accuracy"] > 0.9
    assert sum(map(sum, r["confusion_matrix"])) == r["labelled_pixels"]


def test_segmentation_task_on_voc_and_its_config_errors(tmp_path, capsys):
    write_voc_segmentation(tmp_path, {"train": 4, "val": 2})
    ckpt = write_checkpoint(tmp_path / "ckpt.pt", TINY)
    config = _cli_config(tmp_path, images=8, batch_size=4, image_size=32, head="deeplab",
                         data={"root": ".", "classes": list(SEGMENTATION_CLASSES)})
    assert main(["evaluate", str(ckpt), "--task", "segmentation", config, "--device",
                 "cpu"]) == 0
    r = json.loads((tmp_path / "eval_segmentation.json").read_text())["result"]
    assert r["head"] == "deeplab" and r["train_data"]["images"] == 4
    capsys.readouterr()
    for options, message in [
            ({"data": {"format": "folders", "train": "x", "test": "y"}},
             "'evaluate.segmentation.data.classes' is required for format folders"),
            ({"data": {"format": "voc"}}, "'evaluate.segmentation.data.root' is required"),
            ({"data": {"root": ".", "train": "x"}}, r"\['train'\] belong to format folders"),
            ({"data": {"root": "."}, "output_stride": 8}, "output_stride 8 needs a ResNet"),
            ({"data": {"root": "."}, "head": "unet"}, "'evaluate.segmentation.head': expected"),
            ({"data": {"root": "missing"}}, "Pascal VOC segmentation set not found")]:
        assert main(["evaluate", str(ckpt), "--task", "segmentation",
                     _cli_config(tmp_path, **options), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.search(message, err), err
