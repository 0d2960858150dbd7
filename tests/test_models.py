"""Backbones expose features(x) and a head, build without downloads, and load back from
checkpoints strictly."""

from __future__ import annotations

import pytest
import torch

from betaweighter.errors import CheckpointError
from betaweighter.models import Backbone, build_model, load_backbone


@pytest.mark.parametrize("name,size,dim", [("convnet", 32, 64), ("resnet18", 64, 512)])
def test_features_and_head(name, size, dim):
    torch.manual_seed(0)
    model = build_model(name, num_classes=4)
    x = torch.randn(2, 3, size, size)
    f = model.features(x)
    assert f.shape == (2, dim) and model.feature_dim == dim
    torch.testing.assert_close(model(x), model.head(f))


def test_resnet50_feature_dim():
    assert build_model("resnet50").feature_dim == 2048


def test_unknown_model_and_options():
    with pytest.raises(ValueError, match="convnet"):
        build_model("vgg")
    with pytest.raises(ValueError, match="takes no options"):
        build_model("resnet18", width=3)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=k)


def test_load_restores_the_weights_in_eval_mode(tmp_path, checkpoint_writer,
                                               tiny_convnet_config):
    path = checkpoint_writer(tmp_path / "c.pt", tiny_convnet_config, seed=5)
    model = load_backbone(path, device="cpu")
    torch.manual_seed(5)
    assert isinstance(model, Backbone) and not model.training and model.data_config is None
    _same_weights(model, build_model(**tiny_convnet_config))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_wrapper_prefix_is_stripped_and_the_weights_load(tmp_path, tiny_convnet_config, prefix):
    torch.manual_seed(7)
    model = build_model(**tiny_convnet_config)
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": state, "model_config": tiny_convnet_config,
                "data_config": {"image_size": 32, "mean": [0.1] * 3, "std": [0.2] * 3}},
               tmp_path / "c.pt")
    loaded = load_backbone(tmp_path / "c.pt", device="cpu")
    _same_weights(loaded, model)
    assert loaded.data_config["image_size"] == 32


def test_mismatched_architecture_lists_the_problem(tmp_path, checkpoint_writer,
                                                  tiny_convnet_config):
    path = checkpoint_writer(tmp_path / "c.pt", tiny_convnet_config)
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"] = {"name": "convnet", "num_classes": 4, "width": 16, "blocks": 2}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"do not match.*shape mismatches.*model_config"):
        load_backbone(path)
    ckpt["model_config"] = {"name": "resnet18", "num_classes": 4}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_backbone(path)


def test_missing_entries_and_unknown_architecture(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="no state dict found"):
        load_backbone(tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="lacks 'model'"):
        load_backbone(tmp_path / "a.pt", format="betaweighter")
    torch.save({"model": {}, "model_config": {"name": "vgg"}}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="cannot build the declared architecture"):
        load_backbone(tmp_path / "b.pt")
    torch.save({"model": {}, "model_config": "convnet"}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="must be a dict"):
        load_backbone(tmp_path / "c.pt")


VIT = {"name": "vit_tiny", "num_classes": 4, "image_size": 16, "patch_size": 8, "blocks": 1}


def test_vit_features_are_the_mean_of_the_encoded_patch_tokens():
    """Against torchvision's own forward: its class-token output is token 0 of the same
    encoder pass, so the pooled tokens come from the one network torchvision defines."""
    torch.manual_seed(0)
    model = build_model(**VIT).eval()
    vit, x = model.encoder, torch.randn(3, 3, 16, 16)
    tokens = vit._process_input(x)
    seq = vit.encoder(torch.cat([vit.class_token.expand(3, -1, -1), tokens], 1))
    torch.testing.assert_close(model.features(x), seq[:, 1:].mean(1))
    torch.testing.assert_close(vit(x), seq[:, 0])  # heads are Identity: the class token
    assert model(x).shape == (3, 4) and model.feature_dim == 192
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        build_model(**{**VIT, "patch_size": 5})


def test_a_vit_checkpoint_rebuilds_and_dense_tasks_refuse_it(tmp_path, checkpoint_writer):
    from betaweighter.errors import DataError
    from betaweighter.evaluate.dense import spatial_trunk
    from betaweighter.evaluate.detection import resnet_trunk

    path = checkpoint_writer(tmp_path / "v.pt", VIT, seed=3)
    model = load_backbone(path, device="cpu")
    torch.manual_seed(3)
    _same_weights(model, build_model(**VIT))
    with pytest.raises(DataError, match="takes images of 16x16 px"):
        model.features(torch.zeros(1, 3, 32, 32))
    with pytest.raises(TypeError, match="needs a torchvision ResNet.*VisionTransformer"):
        resnet_trunk(model)
    with pytest.raises(TypeError, match="spatial feature map.*VisionTransformer"):
        spatial_trunk(model)
