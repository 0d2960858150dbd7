"""Published self-supervised checkpoints: their key layouts, mapped onto a torchvision ResNet.

Each method's release wraps the same ResNet in its own names. The transfer study this
library's evaluators follow (Ericsson et al., *How Well Do Self-Supervised Models
Transfer?*, CVPR 2021, arXiv:2011.13377) compares 13 of them; their files differ only in
where the backbone sits and which heads ride along:

=============  ==========================  ==============================================
format         backbone keys               dropped beside them
=============  ==========================  ==============================================
torchvision    ``conv1.``, ``layer1.`` ...  ``fc.`` (also BYOL, SimCLR v1/v2 converted)
moco           ``module.encoder_q.``        ``encoder_q.fc`` MLP, ``encoder_k``, queue (PCL)
mocov3         ``module.base_encoder.``     its ``fc`` head, momentum encoder, predictor
swav           ``module.``                  ``projection_head``, ``prototypes``
                                            (DeepCluster-v2, SeLa-v2)
pycontrast     ``module.encoder.``          ``module.head*`` (InfoMin, InsDis, PIRL, CMC)
solo-learn     ``backbone.``                projector, predictor, classifier, momentum nets
lightly        ``backbone.`` (named, or the ``nn.Sequential(*resnet.children()[:-1])``
               indices)                     projection and prediction heads
=============  ==========================  ==============================================

`convert` finds the backbone's state dict in a file (under ``state_dict``, ``model`` or at
the top), detects the layout from the keys unless one is named, strips the layout's
prefix, drops its heads and returns what was dropped, so the result file can say so. The
keys left must then fit a torchvision ResNet exactly: anything else is an error listing the
keys (`betaweighter.models.load_backbone` checks it). The architecture comes from the file
where it can: a stored ``arch`` string, else the block counts of the keys.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from betaweighter.errors import CheckpointError

if TYPE_CHECKING:
    from torch import Tensor

# torch is imported where it is used, so that the CLI can list FORMATS without loading it

__all__ = ["ALIASES", "FORMATS", "Converted", "canonical_format", "convert", "detect_format",
           "infer_resnet", "read_weights_file"]

FORMATS = ("auto", "betaweighter", "torchvision", "moco", "mocov3", "swav", "pycontrast",
           "solo-learn", "lightly", "timm")
ALIASES = {"pcl": "moco", "mocov2": "moco", "deepcluster-v2": "swav", "sela-v2": "swav",
           "infomin": "pycontrast", "insdis": "pycontrast", "pirl": "pycontrast",
           "cmc": "pycontrast", "byol": "torchvision", "simclr": "torchvision",
           "supervised": "torchvision", "solo": "solo-learn"}
_CONTAINERS = ("state_dict", "model", "network", "net")


@dataclass(frozen=True)
class _Layout:
    namespace: str                     # the backbone's prefix ("" for the top level)
    heads: tuple[str, ...] = ("fc.",)  # prefixes inside the namespace that are not backbone


_LAYOUTS = {
    "torchvision": _Layout(""),
    "moco": _Layout("module.encoder_q."),
    "mocov3": _Layout("module.base_encoder."),
    "swav": _Layout("module.", ("projection_head.", "prototypes.", "fc.")),
    "pycontrast": _Layout("module.encoder."),
    "solo-learn": _Layout("backbone."),
    "lightly": _Layout("backbone."),
}
# nn.Sequential(*resnet.children()[:-1]): index -> torchvision name (2 is ReLU, 3 max-pool)
_SEQUENTIAL = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
               "7": "layer4"}
_RESNETS: dict[tuple[str, tuple[int, ...]], str] = {
    ("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152"}


@dataclass
class Converted:
    """A backbone state dict in torchvision names, and where it came from."""

    state: dict[str, Tensor]
    format: str
    arch: str | None                       # stored in the file, if it says
    dropped: dict[str, int] = field(default_factory=dict)  # prefix -> tensors dropped
    ignored: list[str] = field(default_factory=list)       # other entries of the file

    def report(self) -> dict[str, Any]:
        """What the result file records about the load."""
        return {"format": self.format, "arch": self.arch, "dropped": dict(self.dropped),
                "ignored_entries": list(self.ignored)}


def canonical_format(name: str | None) -> str:
    """`name` as one of FORMATS (aliases such as ``pcl`` or ``infomin`` resolved)."""
    key = (name or "auto").strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {name!r}; choose one of "
                              f"{', '.join(FORMATS)} (or an alias: {', '.join(ALIASES)})")
    return key


def read_weights_file(path: Path) -> dict[str, Any]:
    """The dict stored in a weights file: a ``torch.save`` archive (checked and loaded
    safely, as `read_checkpoint` does; an ``argparse.Namespace`` of training options, which
    several releases store, is allowed), a legacy (pre-1.6) torch file, or ``.safetensors``.
    """
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{path} is a safetensors file: pip install safetensors "
                                  "(it comes with the timm extra)") from None
        try:
            return dict(load_file(str(path)))
        except Exception as err:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"weights file {path} cannot be read as safetensors "
                                  f"({err})") from None
    import torch

    from betaweighter.checkpoint import read_checkpoint

    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
        if not path.is_file() or zipfile.is_zipfile(path) or _looks_zip(path):
            obj = read_checkpoint(path)
        else:
            obj = _read_legacy(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict "
                              "of weights")
    return obj


def _looks_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _read_legacy(path: Path) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a legacy file fails in many ways; all mean "not readable"
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {path} is not a readable torch file "
                              f"({type(err).__name__}: {first}); it is damaged, or holds "
                              "Python objects a safe load refuses") from None


def _find_state(obj: dict[str, Any], path: Path) -> tuple[dict[str, Tensor], list[str]]:
    from torch import Tensor

    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj, []
    for key in _CONTAINERS:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, Tensor)
                                                     for v in inner.values()):
            return inner, sorted(str(k) for k in obj if k != key)
    raise CheckpointError(
        f"checkpoint {path}: no state dict found (looked at the top level and under "
        f"{', '.join(_CONTAINERS)}; the file has {sorted(map(str, obj))[:10]})")


def detect_format(keys: list[str]) -> str:
    """The layout the keys are written in (one of FORMATS), or ``"unknown"``."""
    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("module.encoder_q."):
        return "moco"
    if has("module.base_encoder."):
        return "mocov3"
    if has("module.encoder."):
        return "pycontrast"
    if has("backbone."):
        return "lightly" if has("backbone.0.") else "solo-learn"
    if has("module.") and (has("module.prototypes") or has("module.projection_head")):
        return "swav"
    if has("prototypes") or has("projection_head"):
        return "swav-bare"
    bare = [k[len("module."):] if k.startswith("module.") else k for k in keys]
    if any(k.startswith("conv1.") for k in bare) and any(k.startswith("layer1.") for k in bare):
        return "torchvision-ddp" if has("module.") else "torchvision"
    return "unknown"


def convert(obj: dict[str, Any], path: Path, fmt: str = "auto") -> Converted:
    """Map the weights `obj` (as read from `path`) onto torchvision ResNet names.

    `fmt` is one of FORMATS other than ``betaweighter`` and ``timm`` (those have their own
    loaders), or ``auto`` to detect the layout from the keys.
    """
    arch = obj.get("arch") if isinstance(obj.get("arch"), str) else None
    state, ignored = _find_state(obj, path)
    keys = sorted(state)
    if fmt == "auto":
        fmt = detect_format(keys)
        if fmt == "unknown":
            raise CheckpointError(
                f"checkpoint {path}: cannot tell its layout from the keys ({', '.join(keys[:5])}"
                f"{' ...' if len(keys) > 5 else ''}); name it with --format (one of "
                f"{', '.join(FORMATS[1:])}), or --format timm --arch NAME for a non-ResNet")
    if fmt in ("swav-bare", "torchvision-ddp"):
        fmt, namespace = fmt.split("-")[0], "" if fmt == "swav-bare" else "module."
    else:
        namespace = _LAYOUTS[fmt].namespace
    layout = _LAYOUTS[fmt]
    if not namespace.startswith("module.") and all(k.startswith("module.") for k in keys):
        namespace = "module." + namespace  # saved from inside DistributedDataParallel
    dropped: Counter[str] = Counter()
    out: dict[str, Tensor] = {}
    for key in keys:
        if not key.startswith(namespace):
            dropped[_group(key, "")] += 1
            continue
        name = key[len(namespace):]
        if name.startswith(layout.heads):
            dropped[_group(name, namespace)] += 1
            continue
        out[_sequential_name(name) if fmt == "lightly" else name] = state[key]
    if not out:
        raise CheckpointError(
            f"checkpoint {path}: no backbone weights under {namespace!r}, the {fmt} layout's "
            f"prefix (keys start {', '.join(keys[:3])}); check --format")
    return Converted(out, fmt, arch, dict(sorted(dropped.items())), ignored)


def _group(key: str, namespace: str) -> str:
    """The head a dropped key belongs to: its prefix up to the first sub-module."""
    parts = key.split(".")
    depth = 2 if parts[0] == "module" and len(parts) > 1 else 1
    return namespace + ".".join(parts[:depth])


def _sequential_name(name: str) -> str:
    head, _, rest = name.partition(".")
    return f"{_SEQUENTIAL[head]}.{rest}" if head in _SEQUENTIAL and rest else name


def infer_resnet(state: dict[str, Tensor]) -> str | None:
    """The torchvision ResNet whose blocks the keys describe (``resnet50``,
    ``wide_resnet50_2`` ...), or None when they describe none."""
    counts = []
    for stage in range(1, 5):
        blocks = {m.group(1) for k in state
                  if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(len(blocks))
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    name = _RESNETS.get((kind, tuple(counts)))
    width = state.get("layer1.0.conv1.weight")
    if name in ("resnet50", "resnet101") and width is not None and width.shape[0] == 128:
        return f"wide_{name}_2"
    return name
