"""RPN pre-training: per-image losses that add up to torchvision's, a loss that falls on
the generated set, an exact forward-mode meta-gradient, a frozen trunk, the detector
initialisation, and clear errors."""

import copy

import pytest
import torch
from helpers import one_thread  # noqa: F401 (a fixture)

import betaweighter as bw
from betaweighter.checkpoint import read_checkpoint
from betaweighter.data import shapes
from betaweighter.errors import CheckpointError, DataError
from betaweighter.evaluate.detection import build_faster_rcnn, load_detector_init
from betaweighter.models import build_model
from betaweighter.pretext.rpn import RPNPretext

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundle():
    return shapes(pool_images=8, distractor_ratio=0.5, image_size=64, target_scenes=12,
                  detection_target_images=4)


def _pretext(seed=0, **kw):
    torch.manual_seed(seed)
    return RPNPretext(build_model("resnet18"), **kw)


def test_per_image_losses_average_to_torchvisions_batch_loss(bundle):
    p = _pretext(mean=bundle.mean, std=bundle.std).train()
    x = torch.stack([bundle.pool[i][0] for i in range(3)])
    boxes = [bundle.detection_target[i][1]["boxes"] for i in range(3)]
    torch.manual_seed(5)
    labels, regression = p.targets(boxes, 64, 64, x.device)
    assert ((labels >= 0).sum(1) == 256).all()  # every image fills its sample
    with torch.no_grad():
        out = p(x)
        obj, box = p.losses(out, labels, regression)
        anchors = [p.anchors(64, 64, x.device)] * 3
        gt = [{"boxes": b} for b in boxes]
        tv_labels, matched = p.rpn.assign_targets_to_anchors(anchors, gt)
        tv_regression = p.rpn.box_coder.encode(matched, anchors)
        torch.manual_seed(5)
        tv_obj, tv_box = p.rpn.compute_loss(out[0].reshape(-1, 1), out[1].reshape(-1, 4),
                                            tv_labels, tv_regression)
    torch.testing.assert_close(obj.mean(), tv_obj)
    torch.testing.assert_close(box.mean(), tv_box)


def test_the_pretext_loss_falls_on_the_generated_set(bundle):
    p = _pretext(boxes="random", mean=bundle.mean, std=bundle.std).train()
    opt = torch.optim.SGD([q for q in p.parameters() if q.requires_grad], lr=0.02,
                          momentum=0.9)
    x = torch.stack([bundle.pool[i][0] for i in range(8)])
    trunk = copy.deepcopy(p.backbone.state_dict())
    losses = []
    for _ in range(8):
        b = p.batch(x)
        loss = b.loss_fn(p(b.inputs))
        assert loss.shape == (8,)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        losses.append(float(loss.detach().mean()))
    assert losses[-1] < 0.7 * losses[0]
    assert set(p.loss_parts()) == {"objectness", "box_regression"}
    for k, v in p.backbone.state_dict().items():  # the frozen trunk did not move
        assert torch.equal(v, trunk[k]), k


def test_a_trainable_trunk_keeps_its_batchnorm_fixed(bundle):
    p = _pretext(train_trunk=True, mean=bundle.mean, std=bundle.std).train()
    enc = p.backbone.encoder
    assert enc.layer1[0].conv1.weight.requires_grad and not enc.bn1.weight.requires_grad
    assert not enc.bn1.training and p.fpn.training
    assert not p.backbone.head.weight.requires_grad  # the rotation head is not used


def test_forward_mode_meta_gradient_equals_double_backward(bundle):
    x = torch.stack([bundle.pool[i][0] for i in range(2)])[..., :32, :32].double()
    target = bw.data.BoxedImages(x.clone(), [torch.tensor([[4.0, 4.0, 20.0, 24.0]]),
                                             torch.tensor([[10.0, 2.0, 30.0, 14.0]])],
                                 [torch.ones(1, dtype=torch.int64)] * 2)
    updates = {}
    for method in ("forward", "double_backward"):
        p = _pretext(boxes={"method": "random", "min_size": 4}).double().train()
        opt = torch.optim.SGD([q for q in p.parameters() if q.requires_grad], lr=0.05,
                              momentum=0.9)
        weights = bw.PointWeights(2)
        meta = bw.MetaWeighter(p, weights, opt, bw.DetectionLoss(2), target=target,
                               meta_gradient=method,
                               weight_optimizer=bw.WeightOptimizer("sgd", 1.0, normalise=False))
        before = copy.deepcopy(weights.state_dict())
        torch.manual_seed(1)
        b = p.batch(x)
        meta.backward(b.inputs, b.loss_fn, torch.arange(2))
        updates[method] = {k: v - before[k] for k, v in weights.state_dict().items()}
    for k, v in updates["forward"].items():
        assert v.abs().max() > 0
        torch.testing.assert_close(v, updates["double_backward"][k], rtol=1e-7, atol=1e-12)


def test_the_checkpoint_loads_into_the_detector_with_only_roi_heads_fresh(tmp_path, bundle):
    p = _pretext(mean=bundle.mean, std=bundle.std)
    with torch.no_grad():
        p.rpn.head.cls_logits.bias.fill_(0.25)
    path = p.save_detector_init(tmp_path / "init.pt")
    ckpt = read_checkpoint(path)
    assert ckpt["model_config"] == {"name": "resnet18", "num_classes": 4}
    detector = build_faster_rcnn(build_model("resnet18"), 3, min_size=64, max_size=64)
    report = load_detector_init(detector, ckpt["detector_init"])
    assert report["fresh"] == ["roi_heads.box_head", "roi_heads.box_predictor"]
    assert set(report["loaded"]) == {"backbone.body", "backbone.fpn", "rpn.head"}
    assert report["unused"] == []
    torch.testing.assert_close(detector.rpn.head.cls_logits.bias,
                               torch.full_like(detector.rpn.head.cls_logits.bias, 0.25))
    torch.testing.assert_close(detector.backbone.fpn.layer_blocks[0][0].weight,
                               p.fpn.layer_blocks[0][0].weight)
    torch.testing.assert_close(detector.backbone.body.layer2[0].conv1.weight,
                               p.backbone.encoder.layer2[0].conv1.weight)


def test_mismatched_anchors_or_pyramid_are_refused(bundle):
    init = _pretext().detector_state()
    detector = build_faster_rcnn(build_model("resnet18"), 2, min_size=64, max_size=64,
                                 anchor_sizes=(16, 32, 64, 128, 256))
    with pytest.raises(CheckpointError, match="anchors of sizes"):
        load_detector_init(detector, init)
    detector = build_faster_rcnn(build_model("resnet18"), 2, min_size=64, max_size=64)
    wrong = {**init, "fpn": {**init["fpn"], "in_channels": [256, 512, 1024, 2048]}}
    with pytest.raises(CheckpointError, match="feature pyramid"):
        load_detector_init(detector, wrong)


def test_bad_input_is_refused(bundle):
    p = _pretext()
    with pytest.raises(DataError, match="not inside the 64x64 image"):
        p.target_loss(torch.zeros(1, 3, 64, 64), [torch.tensor([[10.0, 10.0, 70.0, 30.0]])])
    with pytest.raises(ValueError, match="one size per pyramid level"):
        _pretext(anchor_sizes=(32, 64))
    with pytest.raises(TypeError, match="needs a torchvision ResNet"):
        RPNPretext(build_model("convnet", width=4, blocks=1))
    empty = copy.copy(bundle)
    empty.pool = []
    with pytest.raises(DataError, match="pool of shapes is empty"):
        p.bind_data(empty)
