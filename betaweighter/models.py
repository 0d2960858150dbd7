"""Backbones split into ``features(x)`` (an embedding per image) and a ``head``.

The pretext task trains ``head(features(x))``; meta objectives and transfer evaluators use
``features`` alone. All are randomly initialised: nothing is downloaded. `load_backbone`
rebuilds a pre-trained backbone from a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from betaweighter.checkpoint import resolve_checkpoint
from betaweighter.errors import CheckpointError
from betaweighter.pretext.vit import encode, patch_tokens
from betaweighter.published import (
    Converted,
    canonical_format,
    convert,
    infer_resnet,
    read_weights_file,
)
from betaweighter.registry import Registry
from betaweighter.runtime import resolve_device

__all__ = ["ARCHITECTURES", "MODELS", "RESNETS", "Backbone", "ViTBackbone", "build_model",
           "conv_net", "load_backbone", "register_model", "resnet", "resnet18", "resnet50",
           "vit_tiny"]

#: The networks ``model.name`` chooses from; each entry's meta ``fields`` lists the
#: `ModelSection` keys its builder takes (``builder(num_classes, **fields)``).
MODELS = Registry("model", "model.name", decorator="register_model")
# every torchvision ResNet a published checkpoint can be loaded into
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
           "wide_resnet101_2")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def register_model(name: str, *, fields: tuple[str, ...] = ()):  # noqa: ANN201
    """Register a `Backbone` builder as ``model.name: <name>``: it is called as
    ``builder(num_classes, **{key: model.<key> for key in fields})`` (None values left out,
    so the builder's defaults apply), and `load_backbone` rebuilds it the same way."""
    return MODELS.register(name, fields=tuple(fields))


class Backbone(nn.Module):
    """``forward(x) = head(features(x))``; ``feature_dim`` is the embedding size.

    ``data_config`` records the input the backbone was trained on (``image_size``,
    ``mean``, ``std``) when it was loaded from a checkpoint that stores it, else None.
    """

    feature_dim: int

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_dim = int(feature_dim)
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.data_config: dict[str, Any] | None = None
        # where the weights came from, set by `load_backbone`: format, arch, what was dropped
        self.source: dict[str, Any] | None = None

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


@register_model("convnet", fields=("width", "blocks"))
def conv_net(num_classes: int = 4, in_channels: int = 3, width: int = 64,
             blocks: int = 4) -> Backbone:
    """The small 4-block conv net of few-shot learning (Vinyals et al., NeurIPS 2016):
    conv3x3-BN-ReLU-maxpool blocks, then global average pooling (so any input size works)."""
    if blocks < 1 or width < 1:
        raise ValueError(f"blocks and width must be >= 1, got {blocks} and {width}")
    layers = [_conv_block(in_channels, width)]
    layers += [_conv_block(width, width) for _ in range(blocks - 1)]
    encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
    return Backbone(encoder, width, num_classes)


def resnet(arch: str = "resnet18", num_classes: int = 4) -> Backbone:
    """A torchvision ResNet (one of RESNETS) with the standard ImageNet stem, randomly
    initialised; `features` is everything up to the global pool (512-d or 2048-d)."""
    if arch not in RESNETS:
        raise ValueError(f"arch must be one of {RESNETS}, got {arch!r}")
    net = getattr(torchvision.models, arch)(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return Backbone(net, dim, num_classes)


@register_model("resnet18")
def resnet18(num_classes: int = 4) -> Backbone:
    """A randomly initialised ResNet-18 (`resnet`)."""
    return resnet("resnet18", num_classes)


@register_model("resnet50")
def resnet50(num_classes: int = 4) -> Backbone:
    """A randomly initialised ResNet-50 (`resnet`)."""
    return resnet("resnet50", num_classes)


class ViTBackbone(Backbone):
    """A torchvision `VisionTransformer` as a `Backbone`: ``features(x)`` is the mean of
    the patch tokens after the encoder's final LayerNorm (the class token left out).

    Mean pooling rather than the class token: MAE trains the class token only through
    the decoder's attention, and its authors (He et al. 2022, appendix A) find that MAE
    works as well with average pooling as with the class token; a pooled embedding
    summarises every patch whatever the pretext."""

    def features(self, x: Tensor) -> Tensor:
        return encode(self.encoder, patch_tokens(self.encoder, x))[:, 1:].mean(1)


@register_model("vit_tiny", fields=("image_size", "patch_size", "blocks"))
def vit_tiny(num_classes: int = 4, image_size: int = 32, patch_size: int = 4,
             blocks: int = 4) -> Backbone:
    """A small Vision Transformer (Dosovitskiy et al., ICLR 2021) from torchvision's
    `VisionTransformer`, randomly initialised: DeiT-Tiny's width (Touvron et al., ICML
    2021: 192-d tokens, 3 heads, MLP 768) with `blocks` transformer blocks (DeiT-Tiny has
    12; 4 suit small images and the CPU), on `image_size` px images cut into `patch_size`
    px patches (the position embeddings fix the input size)."""
    for key, value in (("image_size", image_size), ("patch_size", patch_size),
                       ("blocks", blocks)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size "
                         f"{patch_size}")
    net = torchvision.models.VisionTransformer(int(image_size), int(patch_size), int(blocks),
                                               num_heads=3, hidden_dim=192, mlp_dim=768)
    net.heads = nn.Identity()  # `Backbone.head` is the head
    return ViTBackbone(net, net.hidden_dim, num_classes)


#: the built-in names of `MODELS` (a snapshot; the registry also holds models of one's own)
ARCHITECTURES = MODELS.names()


def build_model(name: str, num_classes: int = 4, **kwargs: Any) -> Backbone:
    """Build a backbone by name: a registered model (`MODELS`), with its `fields` as
    keyword arguments, or, to load weights into, any torchvision ResNet of RESNETS."""
    if name in MODELS:
        entry = MODELS.get(name)
        extra = sorted(set(kwargs) - set(entry.meta.get("fields", ())))
        if extra:
            raise ValueError(f"model {name} takes no options {extra} (it takes "
                             f"{list(entry.meta.get('fields', ())) or 'none'})")
        return entry.obj(num_classes, **kwargs)
    if name in RESNETS:
        if kwargs:
            raise ValueError(f"{name} takes no options, got {sorted(kwargs)}")
        return resnet(name, num_classes)
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS.names()}")


def load_backbone(path_or_run_dir: str | Path, device: str | torch.device | None = None,
                  which: str | None = None, *, format: str = "auto",
                  arch: str | None = None) -> Backbone:
    """Rebuild a pre-trained `Backbone` from a checkpoint: this library's, or a published one.

    `path_or_run_dir` is a checkpoint file or a run directory (its ``best.pt``, else
    ``last.pt``; `which` picks one). `format` is ``auto`` (detected from the keys) or one of
    `betaweighter.published.FORMATS`: this library's checkpoints, a torchvision ResNet
    state dict, the layouts of published SSL ResNets (MoCo, SwAV, InfoMin ...), solo-learn
    and lightly checkpoints, or ``timm`` with `arch` a timm model name. The architecture
    comes from the file where it can (this library's ``model_config``, a stored ``arch``,
    the block counts); `arch` names it otherwise, and must agree with the keys.

    The load is strict: a missing, unexpected or wrongly shaped tensor raises
    `CheckpointError` listing them. Heads beside the backbone (projectors, prototypes,
    queues, a momentum encoder, a classifier) are dropped, and ``source`` on the returned
    model records the format, the architecture and what was dropped. The model comes back
    in eval mode on `device` (default: the GPU when there is one); ``data_config`` is the
    input it was trained on when the file says (else None: the evaluators' defaults).
    """
    path = resolve_checkpoint(path_or_run_dir, which)
    fmt = canonical_format(format)
    if fmt == "timm":
        model = _load_timm(path, arch)
    else:
        obj = read_weights_file(path)
        is_ours = "model" in obj and "model_config" in obj
        if fmt == "betaweighter" or (fmt == "auto" and is_ours):
            model = _load_own(path, obj, arch)
        else:
            model = _load_resnet(path, convert(obj, path, fmt), arch)
    return model.to(resolve_device(device)).eval()


def _load_own(path: Path, ckpt: dict[str, Any], arch: str | None) -> Backbone:
    for key in ("model", "model_config"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} lacks {key!r} (it has "
                                  f"{sorted(map(str, ckpt))[:10]}), so it is not a "
                                  "betaweighter checkpoint; try --format auto")
    config = ckpt["model_config"]
    if not isinstance(config, dict) or "name" not in config:
        raise CheckpointError(f"checkpoint {path}: 'model_config' must be a dict with at least "
                              f"'name' (e.g. {{'name': 'resnet18'}}), got {config!r}")
    if arch is not None and arch != config["name"]:
        raise CheckpointError(f"checkpoint {path} holds a {config['name']}, not the --arch "
                              f"{arch} asked for; drop --arch (this library's checkpoints "
                              "say their architecture)")
    try:
        model = build_model(**config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: cannot build the declared architecture "
                              f"{config}: {err}") from None
    state = _strip_wrappers(ckpt["model"], path)
    problems = _mismatches(model.state_dict(), state)
    if problems:
        raise CheckpointError(
            f"checkpoint {path}: its 'model' weights do not match the declared architecture "
            f"{config} ({'; '.join(problems)}). The 'model_config' entry probably describes "
            "another network: fix it, or evaluate the checkpoint of the matching run.")
    model.load_state_dict(state, strict=True)
    data_config = ckpt.get("data_config")
    model.data_config = dict(data_config) if isinstance(data_config, dict) else None
    model.source = {"format": "betaweighter", "arch": config["name"], "dropped": {},
                    "ignored_entries": []}
    return model


def _load_resnet(path: Path, converted: Converted, arch: str | None) -> Backbone:
    found = infer_resnet(converted.state)
    stored = converted.arch if converted.arch in RESNETS else None
    name = arch or stored or found
    if name is None:
        raise CheckpointError(
            f"checkpoint {path} ({converted.format} layout): its keys describe no torchvision "
            f"ResNet ({', '.join(sorted(converted.state)[:4])} ...); pass --arch (one of "
            f"{', '.join(RESNETS)}), or --format timm --arch NAME for another network")
    if name not in RESNETS:
        raise CheckpointError(f"--arch {name!r} is not a ResNet this loader builds; choose one "
                              f"of {', '.join(RESNETS)}, or --format timm for other networks")
    model = resnet(name, num_classes=1)
    problems = _mismatches(model.encoder.state_dict(), converted.state)
    if problems:
        raise CheckpointError(
            f"checkpoint {path} ({converted.format} layout) does not fit a {name}"
            + (f" (its keys describe a {found})" if found and found != name else "")
            + f" ({'; '.join(problems)}); check --format and --arch")
    model.encoder.load_state_dict(converted.state, strict=True)
    model.source = {**converted.report(), "arch": name}
    return model


def _load_timm(path: Path, arch: str | None) -> Backbone:
    """A timm model by name, its weights from a local file; the classifier dropped."""
    if not arch:
        raise CheckpointError("--format timm needs --arch, the timm model name "
                              "(e.g. --arch resnet50 or vit_small_patch16_224)")
    try:
        import timm
        import timm.data
    except ImportError:
        raise CheckpointError("--format timm needs timm: pip install "
                              "'betaweighter[timm]'") from None
    try:
        net = timm.create_model(arch, pretrained=False, num_classes=0)
    except RuntimeError as err:  # timm: "Unknown model (...)"
        raise CheckpointError(f"--arch {arch!r}: {err}; `timm.list_models()` lists the "
                              "names") from None
    obj = read_weights_file(path)
    state = _strip_wrappers(next((obj[k] for k in ("state_dict", "model")
                                  if isinstance(obj.get(k), dict)), obj), path)
    expected = net.state_dict()
    head = str(net.pretrained_cfg.get("classifier") or "fc")  # type: ignore[union-attr,operator]
    dropped = sorted(k for k in state if k not in expected and k.startswith(head + "."))
    state = {k: v for k, v in state.items() if k not in dropped}
    problems = _mismatches(expected, state)
    if problems:
        raise CheckpointError(f"weights file {path} does not fit timm's {arch} "
                              f"({'; '.join(problems)}); check --arch")
    net.load_state_dict(state, strict=True)
    model = Backbone(net, int(net.num_features), num_classes=1)  # type: ignore[arg-type]
    cfg = timm.data.resolve_data_config({}, model=net)
    model.data_config = {"image_size": int(cfg["input_size"][-1]),
                         "mean": [float(m) for m in cfg["mean"]],
                         "std": [float(s) for s in cfg["std"]]}
    model.source = {"format": "timm", "arch": arch, "dropped": {head: len(dropped)}
                    if dropped else {}, "ignored_entries": []}
    return model


def _strip_wrappers(state: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"checkpoint {path}: 'model' is not a state_dict "
                              f"(got {type(state).__name__})")
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _mismatches(expected: dict[str, Tensor], got: dict[str, Any]) -> list[str]:
    def show(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k}: {tuple(getattr(got[k], 'shape', ()))} in file vs {tuple(v.shape)} in model"
              for k, v in expected.items()
              if k in got and (not isinstance(got[k], Tensor) or got[k].shape != v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {show(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {show(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {show(shapes)}")
    return problems
