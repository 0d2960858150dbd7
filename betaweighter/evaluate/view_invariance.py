"""Invariance to real changes: several views of the same object.

The real-world protocol of Ericsson, Gouk and Hospedales (arXiv:2111.11398,
``eval_realworld_invariance.py``): multi-view datasets such as COIL-100 (72 poses per
object) or ALOI (viewpoint, illumination, colour temperature) give, for each object, k
images of it under different conditions. Each view's feature is whitened with the
reference statistics, ``z = (f - mu) W``; an object's similarity is the mean cosine over
pairs of its views and its distance the mean Euclidean distance between the whitened
views (the Mahalanobis distance). The paper averages the cosine over all k^2 pairs, *self
pairs included* (each counts 1), which inflates the score by (1 - S) / k; the v2 protocol
averages over the k (k - 1) pairs of distinct views. Distances never count self pairs.

Groups are read from folders laid out as ``root/<object>/<view>.png``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from betaweighter.errors import ConfigError, DataError
from betaweighter.evaluate.invariance import (
    ImageSource,
    _clean,
    _Embedder,
    input_config,
    reference_stats,
)
from betaweighter.evaluate.invariance_table import InvarianceTable
from betaweighter.evaluate.invariance_transforms import PROTOCOLS
from betaweighter.evaluate.whitening import FeatureStats
from betaweighter.runtime import eval_mode, module_device, progress_disabled, resolve_device

__all__ = ["read_view_groups", "measure_view_invariance"]


def read_view_groups(root: str | os.PathLike) -> dict[str, list[Any]]:
    """``{object: [image file, ...]}`` from ``root/<object>/<view>.<ext>`` (sorted)."""
    from betaweighter.data.sources.folders import FolderRaw

    raw = FolderRaw(root, labelled=True)
    assert raw.targets is not None  # labelled=True
    groups: dict[str, list[Any]] = {c: [] for c in raw.classes}
    for path, label in zip(raw.files, raw.targets):
        groups[raw.classes[int(label)]].append(path)
    return groups


def _load(item: Any) -> torch.Tensor:
    if isinstance(item, (str, os.PathLike)):
        from betaweighter.data.images import read_image

        return read_image(item)
    return ImageSource([item])[0]


def measure_view_invariance(model: nn.Module, groups: str | os.PathLike | Mapping[str, Any], *,
                            stats: FeatureStats | None = None, reference: Any = None,
                            protocol: str = "v2", name: str = "views",
                            image_size: int | None = None, resize: int | None = None,
                            mean: Sequence[float] | None = None,
                            std: Sequence[float] | None = None,
                            shrinkage: str | float = "auto", batch_size: int = 64,
                            device: Any = None) -> InvarianceTable:
    """Similarity of the features of views of the same object.

    `groups` is a folder (``object/view.png``) or a mapping from object name to its views
    (image files, uint8 tensors or PIL images). The statistics are `stats`, or estimated
    from `reference` images, or (default) from every view of every object. The paper
    resizes views to the crop size (no margin), which is the default here too.

    Returns an `InvarianceTable` with one row per object: ``transform`` = `name`,
    ``param`` = the object, ``similarity``, ``distance`` and ``count`` = its views; its
    summary is the mean over objects. Objects with a single view cannot be compared and
    are left out with a warning; if none has two, it is a `DataError`.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    groups = read_view_groups(groups) if isinstance(groups, (str, os.PathLike)) else groups
    if not groups:
        raise DataError("no object groups: give a folder laid out as object/view.png")
    single = [obj for obj, views in groups.items() if len(views) < 2]
    if len(single) == len(groups):
        raise DataError(f"every one of the {len(groups)} objects has a single view, so no two "
                        "views can be compared: each object folder (object/view.png) needs "
                        "at least two images of that object")
    if single:
        warnings.warn(f"{len(single)} of {len(groups)} objects have a single view and are "
                      f"left out ({', '.join(map(str, single[:5]))}"
                      f"{', ...' if len(single) > 5 else ''})", stacklevel=2)
    inputs = input_config(model, image_size, resize, mean, std)
    if resize is None:  # the real-world script resizes to the crop size
        inputs.resize = inputs.crop
    device = module_device(model) if device is None else resolve_device(device)
    model.to(device)
    with eval_mode(model):
        if stats is None:
            images = reference if reference is not None else [
                _load(v) for views in groups.values() for v in views]
            stats = reference_stats(model, images, inputs=inputs, protocol=protocol,
                                    shrinkage=shrinkage, batch_size=batch_size, device=device)
        embed = _Embedder(model, inputs, device)
        rows: list[dict[str, Any]] = []
        for obj, views in tqdm(groups.items(), desc="view invariance",
                               disable=progress_disabled(), leave=False):
            if len(views) < 2:
                continue
            clean = [_clean(_load(v), inputs, protocol) for v in views]
            feats = np.concatenate([embed(torch.stack(clean[s:s + batch_size]))
                                    for s in range(0, len(clean), batch_size)])
            sim, dist = _pairs(stats.whiten(feats), protocol)
            rows.append({"transform": name, "param": str(obj), "level": len(rows),
                         "similarity": sim, "distance": dist, "count": len(views)})
    return InvarianceTable(rows, protocol, {"protocol": protocol, "objects": len(rows),
                                            "stats": stats.to_dict()})


def _pairs(z: np.ndarray, protocol: str) -> tuple[float, float]:
    """Mean pairwise cosine (self pairs included under the paper protocol) and mean
    pairwise distance over distinct pairs."""
    k = len(z)
    norms = np.linalg.norm(z, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = z / norms[:, None]
    cos = unit @ unit.T
    off = ~np.eye(k, dtype=bool)
    sim = float(np.nanmean(cos)) if protocol == "paper" else float(np.nanmean(cos[off]))
    diff = np.linalg.norm(z[:, None, :] - z[None, :, :], axis=-1)
    return sim, float(diff[np.triu_indices(k, 1)].mean())
