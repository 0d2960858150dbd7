"""Fused backbones (arXiv:2111.11398): width, features side by side, frozen members,
and every evaluator's answer to one."""

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from betaweighter.errors import ConfigError
from betaweighter.evaluate.detection import resnet_trunk
from betaweighter.evaluate.fewshot import evaluate_fewshot
from betaweighter.evaluate.finetune import evaluate_finetune
from betaweighter.evaluate.fusion import FusedBackbone, fuse
from betaweighter.evaluate.invariance import measure_invariance
from betaweighter.evaluate.linear import default_c_grid, linear_probe
from betaweighter.models import build_model, conv_net


def _members(widths=(4, 6), seed=0):
    out = []
    for i, w in enumerate(widths):
        torch.manual_seed(seed + i)
        out.append(conv_net(width=w, blocks=2).eval())
    return out


def test_fused_width_is_the_sum_and_features_sit_side_by_side():
    a, b = _members((4, 6))
    fused = fuse([a, b])
    x = torch.randn(5, 3, 16, 16)
    assert fused.feature_dim == 10
    with torch.no_grad():
        out = fused.features(x)
        assert out.shape == (5, 10)
        assert torch.equal(out, torch.cat([a.features(x), b.features(x)], 1))
        assert torch.equal(fused(x), out)


def test_add_and_mean_modes_and_their_width_check():
    a, b = _members((4, 4))
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        fa, fb = a.features(x), b.features(x)
        assert torch.allclose(fuse([a, b], "add").features(x), fa + fb)
        assert torch.allclose(fuse([a, b], "mean").features(x), (fa + fb) / 2)
    assert fuse([a, b], "mean").feature_dim == 4
    with pytest.raises(ConfigError, match="one width"):
        fuse(_members((4, 6)), "add")
    with pytest.raises(ConfigError, match="fusion mode must be one of"):
        fuse([a, b], "max")


def test_members_are_frozen_and_stay_in_eval_mode():
    a, b = _members()
    fused = fuse([a, b]).train()
    assert not any(p.requires_grad for p in fused.parameters())
    assert not a.training and not b.training
    out = fused.features(torch.randn(2, 3, 16, 16))
    assert not out.requires_grad
    trainable = fuse(_members(), trainable=True).train()
    assert all(p.requires_grad for p in trainable.parameters())
    assert all(m.training for m in trainable.members)


def test_members_with_different_normalisation_are_refused():
    a, b = _members()
    a.data_config = {"image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}
    b.data_config = {"image_size": 16, "mean": [0.4] * 3, "std": [0.25] * 3}
    with pytest.raises(ConfigError, match="member 0 expects input normalised with mean"):
        fuse([a, b])
    b.data_config = dict(a.data_config)
    assert fuse([a, b]).data_config == a.data_config


def test_fuse_loads_checkpoints(tmp_path, checkpoint_writer, tiny_convnet_config):
    paths = [checkpoint_writer(tmp_path / f"m{i}.pt", tiny_convnet_config, seed=i)
             for i in range(3)]
    fused = fuse(paths, device="cpu")
    assert len(fused.members) == 3 and fused.feature_dim == 24 and fused.grid_shift == 2


def _labelled(n=36, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 3, 16, 16, generator=g) * 0.3 + y.view(-1, 1, 1, 1).float()
    return TensorDataset(x, y)


def test_the_linear_probe_takes_a_fused_backbone_with_the_shifted_grid():
    fused = fuse(_members())
    out = linear_probe(fused, _labelled(), _labelled(seed=1), _labelled(seed=2), max_iter=200)
    assert out["feature_dim"] == 10 and out["top1"] > 0.6
    assert [v["C"] for v in out["val_scores"]] == pytest.approx(default_c_grid(shift=1).tolist())
    assert default_c_grid(shift=1)[0] == pytest.approx(1e4)  # wd from 1e-4 (c = 1)


def test_fewshot_and_invariance_take_a_fused_backbone():
    fused = fuse(_members())
    out = evaluate_fewshot(fused, _labelled(60), way=3, shot=2, query=3, episodes=4)
    assert 0.0 <= out["accuracy"] <= 1.0 and out["episodes"] == 4
    images = (torch.rand(30, 3, 16, 16) * 255).to(torch.uint8)
    table = measure_invariance(fused, images, ["h_flip"], num_images=8, image_size=16,
                               resize=18, mean=[0.5] * 3, std=[0.25] * 3)
    assert table.rows[0]["count"] == 8


def test_detection_refuses_a_fused_backbone_with_the_reason():
    fused = FusedBackbone([build_model("resnet18"), build_model("resnet18")])
    with pytest.raises(TypeError, match="cannot use a fused backbone.*one ResNet trunk"):
        resnet_trunk(fused)


def test_finetuning_a_frozen_fusion_is_off():
    data = _labelled()
    with pytest.raises(TypeError, match="fine-tuning a fused backbone is off"):
        evaluate_finetune(fuse(_members()), data, data, data, num_classes=3, steps=1)
    out = evaluate_finetune(fuse(_members(), trainable=True), data, data, data,
                            num_classes=3, steps=2, lrs=[0.01], weight_decays=[0.0],
                            batch_size=8)
    assert np.isfinite(out["top1"])
