"""Frozen-feature extraction, done once per (model, split) and optionally cached on disk.

Frozen-feature protocols (linear probe, calibration, few-shot; Ericsson et al., "How Well
Do Self-Supervised Models Transfer?", arXiv:2011.13377) need ``features(x)`` of every image
of a split exactly once: in eval mode (BatchNorm uses its running statistics), without
gradients, in batches, and without dropping the last partial batch. The cache key covers
the model weights, the split's file list and labels and its transform, so a stale cache
cannot be read back for a different model or split. A cache never breaks an evaluation:
an entry that cannot be read back whole (a truncated file) is recomputed and replaced, and
one that cannot be written (a full disk) is skipped, each with a logged warning.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Subset
from tqdm.auto import tqdm

from betaweighter.io import save_array
from betaweighter.runtime import eval_mode, module_device, progress_disabled, resolve_device

__all__ = ["dataset_fingerprint", "extract_features", "model_fingerprint"]

_log = logging.getLogger(__name__)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's state_dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dataset_fingerprint(dataset: Any) -> str | None:
    """A digest of what a dataset yields, or None when it cannot be described reliably.

    A dataset with a ``fingerprint()`` method describes itself (this package's image
    folders and their views do: file list, labels, transform, indices). Datasets with a
    ``samples`` list (torchvision ``ImageFolder``) are described by their file list, labels
    and transform; `Subset` by its parent and indices; `ConcatDataset` by its parts. Others
    are described by ``repr`` unless it only shows a memory address (then: None, no cache).
    The file contents are not hashed: rewriting an image in place keeps the key.
    """
    own = getattr(dataset, "fingerprint", None)
    if callable(own):
        return own()
    h = hashlib.sha256()
    if isinstance(dataset, ConcatDataset):
        parts = [dataset_fingerprint(d) for d in dataset.datasets]
        if any(p is None for p in parts):
            return None
        h.update("+".join(cast(list[str], parts)).encode())  # no None: returned above
        return h.hexdigest()
    if isinstance(dataset, Subset):
        parent = dataset_fingerprint(dataset.dataset)
        if parent is None:
            return None
        h.update(parent.encode())
        h.update(np.asarray(dataset.indices, dtype=np.int64).tobytes())
        return h.hexdigest()
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list):
        h.update(type(dataset).__name__.encode())
        h.update(repr(getattr(dataset, "transform", None)).encode())
        for path, label in samples:
            h.update(f"{path}\0{label}\n".encode())
        return h.hexdigest()
    text = repr(dataset)
    if " at 0x" in text:
        return None
    h.update(text.encode())
    h.update(str(len(dataset)).encode())
    return h.hexdigest()


@torch.no_grad()
def extract_features(model: nn.Module, dataset: Any, *, batch_size: int = 64,
                     num_workers: int = 0, device: str | torch.device | None = None,
                     cache_dir: str | Path | None = None,
                     name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """``(features, labels)`` of every item of a dataset yielding (image, label).

    `features` is a float32 array (N, D) from ``model.features(x)`` (or ``model(x)`` when
    the model has no ``features``); `labels` is int64 (N,). The model runs in eval mode and
    its training flag is restored afterwards. With `cache_dir`, the arrays are stored as
    ``<cache_dir>/<name>-<key>.{features,labels}.npy`` (memory-mapped on reading) and
    reused while the model weights and the dataset stay the same. The model runs where
    it is, or is moved to `device` when one is given.
    """
    cache = _cache_paths(model, dataset, cache_dir, name)
    if cache is not None and cache[0].is_file() and cache[1].is_file():
        cached = _read_cache(cache, len(dataset))
        if cached is not None:
            return cached
    device = module_device(model) if device is None else resolve_device(device)
    model.to(device)
    embed = (cast(Callable[[Tensor], Tensor], model.features)
             if callable(getattr(model, "features", None)) else model)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    feats, labels = [], []
    with eval_mode(model):
        for x, y in tqdm(loader, desc=f"features {name}", disable=progress_disabled(), leave=False):
            out = embed(x.to(device, non_blocking=True))
            feats.append(out.flatten(1).float().cpu().numpy())
            labels.append(torch.as_tensor(y).reshape(-1).cpu().numpy().astype(np.int64))
    if not feats:
        raise ValueError(f"cannot extract features of split {name!r}: the dataset is empty")
    features, targets = np.concatenate(feats), np.concatenate(labels)
    if cache is not None:
        try:
            save_array(cache[0], features)
            save_array(cache[1], targets)
        except OSError as err:  # a cache is an optimisation: go on without it
            _log.warning("the feature cache was not written (%s); the features are "
                         "computed again next time", err)
    return features, targets


def _read_cache(cache: tuple[Path, Path], size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (features, labels) when both files read back whole and agree with the
    dataset's size; None (after a warning) when not, so they are recomputed and replaced."""
    try:
        features, labels = np.load(cache[0], mmap_mode="r"), np.load(cache[1])
    except (OSError, ValueError, EOFError):  # truncated, garbage, unreadable
        features = labels = None
    if (features is not None and features.ndim == 2 and labels.ndim == 1
            and len(features) == len(labels) == size):
        return features, labels
    _log.warning("feature cache entry %s is damaged or incomplete: computing it again",
                 cache[0])
    return None


def _cache_paths(model: nn.Module, dataset: Any, cache_dir: str | Path | None,
                 name: str) -> tuple[Path, Path] | None:
    if cache_dir is None:
        return None
    data_key = dataset_fingerprint(dataset)
    if data_key is None:
        return None
    key = hashlib.sha256(f"{model_fingerprint(model)}{data_key}".encode()).hexdigest()[:20]
    base = Path(cache_dir)
    return base / f"{name}-{key}.features.npy", base / f"{name}-{key}.labels.npy"
