"""How invariant are a backbone's features to synthetic transformations?

Protocol of Ericsson, Gouk and Hospedales, "Why Do Self-Supervised Models Transfer?
Investigating the Impact of Invariance on Downstream Tasks" (arXiv:2111.11398): for every
measured image, the feature of the clean image f0 and of each transformed copy fj are
compared by the cosine of ``(f0 - mu)`` and ``(fj - mu)`` in the Mahalanobis geometry of a
reference set (mean mu, covariance Sigma), and by their Mahalanobis distance. The mean over
images gives one point of a curve per parameter value; the mean of the curve is the
transform's score. 1 means the features do not move at all; 0 means the transformed image
looks as unrelated as a random one.

``protocol="paper"`` reproduces the original code, quirks included; ``"v2"`` (the
default) fixes them. `betaweighter.evaluate.invariance_transforms` lists both; in short,
the paper averages the identity parameter into the score (a flip scores (1 + cos) / 2),
samples the images with replacement, and transforms the image at its original size with
offsets meant for the resized one. Statistics are always estimated in float64 with a
stable eigendecomposition and Ledoit-Wolf shrinkage where the reference set is too small
(`betaweighter.evaluate.whitening`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from betaweighter.data.input_spec import InputSpec
from betaweighter.data.transforms import as_uint8_chw
from betaweighter.errors import ConfigError, DataError
from betaweighter.evaluate.invariance_table import InvarianceTable
from betaweighter.evaluate.invariance_transforms import (
    DISCRETE,
    PROTOCOLS,
    Geometry,
    check_transforms,
    parameters,
    transform_batch,
)
from betaweighter.evaluate.whitening import FeatureStats
from betaweighter.runtime import eval_mode, module_device, progress_disabled, resolve_device

__all__ = ["ImageSource", "InputConfig", "input_config", "measure_invariance",
           "reference_stats", "to_uint8"]



def to_uint8(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``Normalize(mean, std)`` on a float batch (N, 3, H, W) (or one image) and
    return uint8 images, e.g. for the library's ready-normalised demo tensors."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    x = images.float() * s + m
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


class ImageSource:
    """Images to measure: a uint8 tensor (N, 3, H, W), a folder (every image file under
    it), or any indexable dataset whose items are an image or a tuple starting with one
    (uint8 tensor, float tensor in [0, 1], PIL image or (H, W, C) uint8 array)."""

    def __init__(self, data: Any) -> None:
        if isinstance(data, (str, os.PathLike)):
            from betaweighter.data.sources.folders import FolderRaw

            data = FolderRaw(data, labelled=False)
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Tensor:
        item = self.data[int(i)]
        image = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(image, Tensor) and image.is_floating_point():
            if image.min() < -1e-6 or image.max() > 1 + 1e-6:
                raise DataError(
                    f"image {i} holds float values outside [0, 1] (from {float(image.min()):.2f}"
                    f" to {float(image.max()):.2f}): it looks normalised. Pass raw images, or "
                    "undo the normalisation with betaweighter.evaluate.invariance.to_uint8")
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        out = as_uint8_chw(image)
        if out.dim() != 3 or out.shape[0] != 3:
            raise DataError(f"image {i} has shape {tuple(out.shape)}; expected (3, H, W)")
        return out


class InputConfig:
    """Crop size, resize, normalisation: the evaluation input of a backbone."""

    def __init__(self, crop: int, resize: int, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        if crop < 1 or resize < crop:
            raise ConfigError(f"need 1 <= image_size <= resize, got image_size {crop} and "
                              f"resize {resize}")
        self.crop, self.resize = int(crop), int(resize)
        self.mean = torch.as_tensor([float(v) for v in mean]).view(1, -1, 1, 1)
        self.std = torch.as_tensor([float(v) for v in std]).view(1, -1, 1, 1)

    def normalise(self, x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        x = x.to(dtype) / 255.0
        return (x - self.mean.to(dtype)) / self.std.to(dtype)


def input_config(model: nn.Module, image_size: int | None = None, resize: int | None = None,
                 mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> InputConfig:
    """The evaluation input of `model`: what is given, else its ``data_config`` (what it
    was trained on), else ImageNet's 224 px and statistics (`InputSpec.resolve`); the
    resize defaults to the paper's 256/224 ratio (`InputSpec.crop_resize`)."""
    try:
        spec = InputSpec.resolve(getattr(model, "data_config", None), image_size=image_size,
                                 mean=mean, std=std, resize=resize)
    except ValueError as e:
        raise ConfigError(f"the evaluation input: {e}") from None
    crop, size = spec.crop_resize()
    return InputConfig(crop, size, spec.mean, spec.std)


class _Embedder:
    """``model.features`` (or ``model``) of uint8 batches, in eval mode, on a device."""

    def __init__(self, model: nn.Module, inputs: InputConfig, device: torch.device) -> None:
        self.model, self.inputs, self.device = model, inputs, device
        self.fn = (cast(Callable[[Tensor], Tensor], model.features)
                   if callable(getattr(model, "features", None)) else model)
        params = [p for p in model.parameters() if p.is_floating_point()]
        self.dtype = params[0].dtype if params else torch.float32

    @torch.no_grad()
    def __call__(self, x: Tensor) -> np.ndarray:
        out = self.fn(self.inputs.normalise(x, self.dtype).to(self.device))
        return out.flatten(1).double().cpu().numpy()


def _clean(image: Tensor, inputs: InputConfig, protocol: str) -> Tensor:
    base = F.resize(image, inputs.resize, antialias=True)
    if protocol == "v2":
        base = F.center_crop(base, [inputs.resize, inputs.resize])
    return F.center_crop(base, [inputs.crop, inputs.crop])


def _chunks(images: list[Tensor], batch_size: int) -> list[tuple[np.ndarray, Tensor]]:
    """Batches of same-sized images: (positions in `images`, stacked uint8 tensor)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    out = []
    for positions in groups.values():
        for s in range(0, len(positions), batch_size):
            part = positions[s:s + batch_size]
            out.append((np.asarray(part), torch.stack([images[i] for i in part])))
    return out


def reference_stats(model: nn.Module, data: Any, *, inputs: InputConfig | None = None,
                    protocol: str = "v2", shrinkage: str | float = "auto",
                    batch_size: int = 64, device: Any = None) -> FeatureStats:
    """`FeatureStats` of the clean features of every image of `data` (the paper uses the
    whole ImageNet validation set)."""
    source = ImageSource(data)
    inputs = inputs or input_config(model)
    device = module_device(model) if device is None else resolve_device(device)
    embed = _Embedder(model, inputs, device)
    with eval_mode(model):
        feats = []
        for s in tqdm(range(0, len(source), batch_size), desc="reference features",
                      disable=progress_disabled(), leave=False):
            batch = [_clean(source[i], inputs, protocol)
                     for i in range(s, min(s + batch_size, len(source)))]
            feats.append(embed(torch.stack(batch)))
    if not feats:
        raise DataError("the reference set is empty: give images for the feature statistics")
    return FeatureStats.from_features(np.concatenate(feats), shrinkage=shrinkage)


def _sample(n: int, num_images: int, seed: int, protocol: str) -> np.ndarray:
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if protocol == "paper":  # np.random.seed(seed); np.random.choice(n, num_images)
        return np.random.RandomState(seed).choice(np.arange(n), num_images)
    take = min(num_images, n)
    return np.sort(np.random.default_rng(seed).choice(n, take, replace=False))


def measure_invariance(model: nn.Module, data: Any, transforms: Sequence[str] | str | None = None,
                       *, k: int | None = None, num_images: int = 1000,
                       stats: FeatureStats | None = None, reference: Any = None,
                       seed: int = 0, protocol: str = "v2", image_size: int | None = None,
                       resize: int | None = None, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None, shrinkage: str | float = "auto",
                       batch_size: int = 64, device: Any = None) -> InvarianceTable:
    """Mahalanobis-normalised cosine similarity between clean and transformed features.

    Args:
        model: anything with ``features(x)`` (else ``model(x)`` is the feature).
        data: the images measured (see `ImageSource`): a folder, a uint8 tensor or a
            dataset of raw images.
        transforms: names from `TRANSFORMS` (default: all).
        k: parameter values per continuous transform (default: the paper's 256; flips,
            grayscale, invert, equalize and posterize always use their own 2 or 7).
        num_images: images measured, drawn with `seed` (paper: with replacement).
        stats: precomputed `FeatureStats`; else they are estimated from `reference`
            (default: all of `data`) with `shrinkage`.
        protocol: ``"paper"`` or ``"v2"`` (see the module docstring).
        image_size, resize, mean, std: the evaluation input (default: the model's
            ``data_config``, resize = image_size x 256 / 224).

    Returns an `InvarianceTable` (one row per transform and parameter value).
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    names = check_transforms(transforms)
    inputs = input_config(model, image_size, resize, mean, std)
    source = ImageSource(data)
    if len(source) == 0:
        raise DataError("no images to measure invariance on")
    device = module_device(model) if device is None else resolve_device(device)
    model.to(device)
    with eval_mode(model):
        if stats is None:
            stats = reference_stats(model, source.data if reference is None else reference,
                                    inputs=inputs, protocol=protocol, shrinkage=shrinkage,
                                    batch_size=batch_size, device=device)
        rows = _measure(model, source, names, k, num_images, stats, seed, protocol, inputs,
                        batch_size, device)
    info = {"protocol": protocol, "k": k, "num_images": num_images, "seed": seed,
            "image_size": inputs.crop, "resize": inputs.resize, "stats": stats.to_dict()}
    return InvarianceTable(rows, protocol, info)


def _measure(model: nn.Module, source: ImageSource, names: Sequence[str], k: int | None,
             num_images: int, stats: FeatureStats, seed: int, protocol: str,
             inputs: InputConfig, batch_size: int, device: torch.device) -> list[dict]:
    embed = _Embedder(model, inputs, device)
    picked = _sample(len(source), num_images, seed, protocol)
    cache: dict[int, Tensor] = {}
    images = []
    for i in picked.tolist():  # the paper's draw repeats images: decode each once
        if i not in cache:
            image = source[i]
            if protocol == "v2":
                image = F.center_crop(F.resize(image, inputs.resize, antialias=True),
                                      [inputs.resize, inputs.resize])
            cache[i] = image
        images.append(cache[i])
    chunks = _chunks(images, batch_size)
    clean = np.zeros((len(images), stats.dim))
    for positions, batch in chunks:
        clean[positions] = stats.whiten(embed(_post(batch, inputs, protocol, "clean")))
    geometry = Geometry(inputs.resize, inputs.crop, protocol, seed)
    rows = []
    for name in names:
        params = parameters(name, None if name in DISCRETE else k, geometry)
        rng = np.random.default_rng(seed)  # the paper's random elastic warps
        for param in tqdm(params, desc=f"invariance {name}", disable=progress_disabled(),
                          leave=False):
            sims = np.full(len(images), np.nan)
            dists = np.full(len(images), np.nan)
            for positions, batch in chunks:
                moved = transform_batch(name, batch, param, geometry, rng)
                z = stats.whiten(embed(_post(moved, inputs, protocol, name)))
                z0 = clean[positions]
                norms = np.linalg.norm(z0, axis=1) * np.linalg.norm(z, axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    sims[positions] = np.where(norms > 0, (z0 * z).sum(1) / norms, np.nan)
                dists[positions] = np.linalg.norm(z0 - z, axis=1)
            ok = np.isfinite(sims)
            rows.append({"transform": name, "param": param.label, "level": param.level,
                         "similarity": float(sims[ok].mean()) if ok.any() else math.nan,
                         "distance": float(np.nanmean(dists)) if ok.any() else math.nan,
                         "count": int(ok.sum())})
    return rows


def _post(x: Tensor, inputs: InputConfig, protocol: str, name: str) -> Tensor:
    """The resize and centre crop after a transformation (a resized crop is final)."""
    if name == "resized_crop":
        return x
    if protocol == "paper":
        x = F.resize(x, inputs.resize, antialias=True)
    return F.center_crop(x, [inputs.crop, inputs.crop])
