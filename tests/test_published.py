"""Published checkpoints: each key layout, built here from a torchvision ResNet-18, loads
into a backbone whose features equal the source network's exactly."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torchvision
from torch import nn

from betaweighter.cli import main
from betaweighter.errors import CheckpointError
from betaweighter.models import load_backbone
from betaweighter.published import canonical_format, detect_format, infer_resnet


@pytest.fixture(scope="module")
def source():
    """A randomly initialised ResNet-18 (BatchNorm statistics moved off their defaults),
    its state dict, and its pooled features of a fixed batch."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    net.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fc, net.fc = net.fc, nn.Identity()
    with torch.no_grad():
        features = net(x)
    net.fc = fc
    state = {k: v.clone() for k, v in net.state_dict().items()}
    return state, x, features


def _trunk(state):
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _mlp(prefix):
    return {f"{prefix}0.weight": torch.randn(8, 512), f"{prefix}0.bias": torch.randn(8),
            f"{prefix}2.weight": torch.randn(4, 8)}


def _layouts(state):
    trunk = _trunk(state)
    seq = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
           "7": "layer4"}
    by_name = {v: k for k, v in seq.items()}
    lightly_seq = {}
    for k, v in trunk.items():
        head, _, rest = k.partition(".")
        lightly_seq[f"backbone.{by_name[head]}.{rest}"] = v
    return {
        "torchvision": (state, {"fc": 2}),
        "torchvision_ddp": ({f"module.{k}": v for k, v in state.items()}, {"module.fc": 2}),
        "moco": ({"epoch": 200, "arch": "resnet18",
                  "state_dict": {**{f"module.encoder_q.{k}": v for k, v in trunk.items()},
                                 **_mlp("module.encoder_q.fc."),
                                 **{f"module.encoder_k.{k}": v for k, v in trunk.items()},
                                 **_mlp("module.encoder_k.fc."),
                                 "module.queue": torch.randn(4, 16),
                                 "module.queue_ptr": torch.zeros(1, dtype=torch.long)},
                  "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": [0]}]}},
                 {"module.encoder_k": len(trunk) + 3, "module.encoder_q.fc": 3,
                  "module.queue": 1, "module.queue_ptr": 1}),
        "mocov3": ({"state_dict": {**{f"module.base_encoder.{k}": v for k, v in trunk.items()},
                                   **_mlp("module.base_encoder.fc."),
                                   **_mlp("module.predictor."),
                                   **{f"module.momentum_encoder.{k}": v
                                      for k, v in trunk.items()}}},
                   {"module.base_encoder.fc": 3, "module.momentum_encoder": len(trunk),
                    "module.predictor": 3}),
        "swav": ({**{f"module.{k}": v for k, v in trunk.items()},
                  **_mlp("module.projection_head."),
                  "module.prototypes.weight": torch.randn(30, 4)},
                 {"module.projection_head": 3, "module.prototypes": 1}),
        "pycontrast": ({"model": {**{f"module.encoder.{k}": v for k, v in trunk.items()},
                                  **_mlp("module.head."), **_mlp("module.head_jig.")},
                        "opt": argparse.Namespace(lr=0.03, arch="resnet18"), "epoch": 800},
                       {"module.head": 3, "module.head_jig": 3}),
        "solo-learn": ({"state_dict": {**{f"backbone.{k}": v for k, v in trunk.items()},
                                       **_mlp("projector."), "classifier.weight":
                                       torch.randn(10, 512)}, "epoch": 3},
                       {"classifier": 1, "projector": 3}),
        "lightly": ({"state_dict": {**lightly_seq, **_mlp("projection_head.layers.")}},
                    {"projection_head": 3}),
    }


LAYOUTS = ["torchvision", "torchvision_ddp", "moco", "mocov3", "swav", "pycontrast",
           "solo-learn", "lightly"]


@pytest.mark.parametrize("name", LAYOUTS)
def test_each_layout_loads_the_source_features_exactly(tmp_path, source, name):
    state, x, features = source
    obj, dropped = _layouts(state)[name]
    path = tmp_path / f"{name}.pth.tar"
    torch.save(obj, path)
    fmt = name.split("_")[0]
    assert detect_format(sorted(next((obj[k] for k in ("state_dict", "model") if k in obj),
                                     obj))) in (fmt, "torchvision-ddp")
    for given in ("auto", fmt):
        model = load_backbone(path, "cpu", format=given)
        with torch.no_grad():
            assert torch.equal(model.features(x), features)
        assert model.source["format"] == fmt
        assert model.source["arch"] == "resnet18"
        assert model.source["dropped"] == dropped


def test_legacy_torch_files_and_aliases(tmp_path, source):
    state, x, features = source
    path = tmp_path / "old.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    model = load_backbone(path, "cpu", format="byol")
    with torch.no_grad():
        assert torch.equal(model.features(x), features)
    assert canonical_format("DeepCluster_v2") == "swav"
    assert canonical_format("InfoMin") == "pycontrast"
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'dino'"):
        canonical_format("dino")


def test_architecture_from_keys_and_its_conflicts(tmp_path, source):
    state, _, _ = source
    with torch.device("meta"):
        for name in ("resnet34", "resnet50", "wide_resnet50_2", "resnet101"):
            assert infer_resnet(getattr(torchvision.models, name)().state_dict()) == name
    assert infer_resnet({"features.0.weight": torch.zeros(1)}) is None
    torch.save(state, tmp_path / "r18.pt")
    with pytest.raises(CheckpointError, match=r"does not fit a resnet50 \(its keys describe "
                                              r"a resnet18\) .*missing keys"):
        load_backbone(tmp_path / "r18.pt", "cpu", arch="resnet50")
    moco = _layouts(state)["moco"][0]
    moco["arch"] = "resnet50"  # the file's own word wins over the keys; they disagree
    torch.save(moco, tmp_path / "moco.pt")
    with pytest.raises(CheckpointError, match="does not fit a resnet50"):
        load_backbone(tmp_path / "moco.pt", "cpu")
    with pytest.raises(CheckpointError, match="not a ResNet this loader builds"):
        load_backbone(tmp_path / "r18.pt", "cpu", arch="vgg11")


def test_what_does_not_fit_is_an_error_listing_the_keys(tmp_path, source):
    state, _, _ = source
    stray = {**_trunk(state), "layer4.1.extra.weight": torch.zeros(1)}
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in stray.items()}},
               tmp_path / "stray.pt")
    with pytest.raises(CheckpointError, match=r"moco layout.*1 unexpected keys: "
                                              r"layer4\.1\.extra\.weight"):
        load_backbone(tmp_path / "stray.pt", "cpu")
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "vgg.pt")
    with pytest.raises(CheckpointError, match="cannot tell its layout.*--format"):
        load_backbone(tmp_path / "vgg.pt", "cpu")
    torch.save({"state_dict": {"module.encoder_k.conv1.weight": torch.zeros(1)}},
               tmp_path / "k.pt")
    with pytest.raises(CheckpointError, match="no backbone weights under 'module.encoder_q.'"):
        load_backbone(tmp_path / "k.pt", "cpu", format="moco")
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "opt.pt")
    with pytest.raises(CheckpointError, match="no state dict found"):
        load_backbone(tmp_path / "opt.pt", "cpu")
    torch.save(state, tmp_path / "r18.pt")
    with pytest.raises(CheckpointError, match="lacks 'model'.*not a betaweighter checkpoint"):
        load_backbone(tmp_path / "r18.pt", "cpu", format="betaweighter")


def test_timm_by_name_from_a_local_file(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=7).eval()
    state = net.state_dict()
    save_file(state, tmp_path / "r18.safetensors")
    torch.save({"state_dict": state}, tmp_path / "r18.pth")
    x = torch.randn(2, 3, 64, 64)
    net.reset_classifier(0)
    with torch.no_grad():
        expected = net(x)
    for name in ("r18.safetensors", "r18.pth"):
        model = load_backbone(tmp_path / name, "cpu", format="timm", arch="resnet18")
        with torch.no_grad():
            assert torch.equal(model.features(x), expected)
        assert model.source == {"format": "timm", "arch": "resnet18", "dropped": {"fc": 2},
                                "ignored_entries": []}
        assert model.data_config["image_size"] == 224
    with pytest.raises(CheckpointError, match="--format timm needs --arch"):
        load_backbone(tmp_path / "r18.pth", "cpu", format="timm")
    with pytest.raises(CheckpointError, match="does not fit timm's resnet34"):
        load_backbone(tmp_path / "r18.pth", "cpu", format="timm", arch="resnet34")


def test_evaluate_reads_a_published_file_and_records_what_it_dropped(
        tmp_path, source, capsys):
    """`betaweighter evaluate FILE --format moco`: the result file says what was dropped."""
    from tests.ondisk import write_image_folder

    state, _, _ = source
    torch.save(_layouts(state)["moco"][0], tmp_path / "moco.pth.tar")
    train = write_image_folder(tmp_path / "train", {"red": 6, "blue": 6}, size=32)
    test = write_image_folder(tmp_path / "test", {"red": 4, "blue": 4}, size=32, seed=1)
    code = main(["evaluate", str(tmp_path / "moco.pth.tar"), "--task", "linear",
                 "--format", "pcl", "--device", "cpu",
                 "--set", f"evaluate.linear.data.train={train}",
                 "--set", f"evaluate.linear.data.test={test}",
                 "--set", "evaluate.linear.image_size=32",
                 "--set", "evaluate.linear.c_values=[1.0]"])
    assert code == 0
    payload = json.loads((tmp_path / "eval_linear.json").read_text())
    assert payload["source"]["format"] == "moco"
    assert payload["source"]["dropped"]["module.queue"] == 1
    data = payload["result"]["data"]
    assert data["train_images"] + data["val_images"] == 12
    assert payload["result"]["feature_dim"] == 512
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "moco.pth.tar"), "--task", "linear",
                 "--format", "swav", "--device", "cpu",
                 "--set", f"evaluate.linear.data.train={train}",
                 "--set", f"evaluate.linear.data.test={test}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "swav layout" in err[0] and "--arch" in err[0]
