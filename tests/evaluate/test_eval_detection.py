"""Faster R-CNN + FPN on our ResNet: frozen BatchNorm, trainable layers, a tiny CPU run."""

import math

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from betaweighter.data.detection import load_coco
from betaweighter.evaluate.detection import (
    build_faster_rcnn,
    evaluate_detection,
    freeze_batchnorm,
    resnet_trunk,
)
from betaweighter.models import build_model

TINY = dict(min_size=64, max_size=96)


def test_batchnorm_is_frozen_with_the_pretrained_statistics():
    torch.manual_seed(0)
    backbone = build_model("resnet18", num_classes=4)
    bn = backbone.encoder.layer1[0].bn1
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.weight.uniform_(0.5, 2)
    x = torch.randn(2, 64, 8, 8)
    expected = bn.eval()(x)
    frozen = freeze_batchnorm(backbone.encoder)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    assert isinstance(frozen.layer1[0].bn1, FrozenBatchNorm2d)
    torch.testing.assert_close(frozen.layer1[0].bn1(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers, trained", [(0, set()), (1, {"layer4"}),
                                             (5, {"conv1", "layer1", "layer2", "layer3",
                                                  "layer4"})])
def test_trainable_layers_selects_the_trunk_stages(layers, trained):
    model = build_faster_rcnn(build_model("resnet18"), 2, trainable_layers=layers, **TINY)
    body = model.backbone.body
    stages = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert stages == trained
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())
    assert all(p.requires_grad for p in model.roi_heads.parameters())


def test_the_detector_starts_from_the_pretrained_weights_and_leaves_them_alone():
    backbone = build_model("resnet18")
    model = build_faster_rcnn(backbone, 2, **TINY)
    torch.testing.assert_close(model.backbone.body.layer3[0].conv1.weight,
                               backbone.encoder.layer3[0].conv1.weight)
    assert model.backbone.body.layer3[0].conv1.weight is not backbone.encoder.layer3[0].conv1.weight
    assert isinstance(backbone.encoder.bn1, torch.nn.BatchNorm2d)  # the original is untouched


def test_non_resnet_backbones_are_refused(tiny_convnet_config):
    with pytest.raises(TypeError, match="needs a torchvision ResNet"):
        resnet_trunk(build_model(**tiny_convnet_config))


def test_two_iteration_training_on_synthetic_coco_gives_finite_ap(tmp_path, coco_writer):
    train = load_coco(*coco_writer(tmp_path / "train", images=4, size=64, seed=0), hflip=True)
    test = load_coco(*coco_writer(tmp_path / "test", images=2, size=64, seed=1),
                     classes=train.classes)
    torch.manual_seed(0)
    r = evaluate_detection(build_model("resnet18"), train, test, images=4, batch_size=2,
                           score_threshold=0.0, device="cpu", **TINY)
    assert r["training"]["iterations"] == 2 and r["training"]["images_seen"] == 4
    assert math.isfinite(r["training"]["final_loss"])
    for key in ("AP", "AP50", "AP75", "voc07_AP50"):
        assert math.isfinite(r[key]) and 0.0 <= r[key] <= 1.0
    assert r["detections"] > 0 and r["trainable_layers"] == 1
    assert r["test_data"]["images"] == 2


def test_a_diverging_detector_is_one_error_naming_the_setting(tmp_path, coco_writer):
    from betaweighter.errors import BetaweighterError

    train = load_coco(*coco_writer(tmp_path / "train", images=4, size=64, seed=0))
    torch.manual_seed(0)
    with pytest.raises(BetaweighterError, match=r"detection loss became .* lower the task's "
                                                r"'lr'"):
        evaluate_detection(build_model("resnet18"), train, train, images=8, batch_size=2,
                           lr=1e8, warmup_images=0, device="cpu", **TINY)
