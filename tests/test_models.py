"""Backbones expose features(x) and a head, and build without downloads."""

from __future__ import annotations

import pytest
import torch

from betaweighter.models import build_model


@pytest.mark.parametrize("name,size,dim", [("convnet", 32, 64), ("resnet18", 64, 512)])
def test_features_and_head(name, size, dim):
    torch.manual_seed(0)
    model = build_model(name, num_classes=4)
    x = torch.randn(2, 3, size, size)
    f = model.features(x)
    assert f.shape == (2, dim) and model.feature_dim == dim
    torch.testing.assert_close(model(x), model.head(f))
    model.replace_head(10)
    assert model(x).shape == (2, 10)


def test_resnet50_feature_dim():
    assert build_model("resnet50").feature_dim == 2048


def test_unknown_model():
    with pytest.raises(ValueError, match="convnet"):
        build_model("vgg")
