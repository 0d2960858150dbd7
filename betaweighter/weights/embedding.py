"""Embeddings of a pool for weighting methods that look at the data: pixels or the current
model's features, a chunk at a time, in eval mode.

Shared by the NN-Weighter (distances to the labelled target) and the cluster weights
(k-means over the pool)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from betaweighter.runtime import eval_mode, progress_disabled

__all__ = ["SPACES", "chunks", "embed", "embed_all"]

SPACES = ("pixel", "feature")


def chunks(data: Any, size: int) -> Iterator[Tensor]:
    """The inputs of `data` (a tensor, or a map-style dataset whose items are inputs or
    tuples starting with the input), `size` at a time, in index order."""
    if isinstance(data, Tensor):
        yield from data.split(size)
        return
    for start in range(0, len(data), size):
        items = [data[i] for i in range(start, min(start + size, len(data)))]
        yield torch.stack([torch.as_tensor(it[0] if isinstance(it, (tuple, list)) else it)
                           for it in items])


def embed(data: Any, model: nn.Module | None, space: str, chunk_size: int, name: str,
          device: torch.device) -> Iterator[Tensor]:
    """Flattened embeddings of `data`, chunk by chunk: the inputs themselves (``"pixel"``),
    or ``model.features`` (the model's output when it has no `features`), in eval mode."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    if space == "feature" and model is None:
        raise ValueError("space='feature' needs the model")
    if model is not None:
        device = next(model.parameters()).device
    total = math.ceil(len(data) / chunk_size)
    with eval_mode(model), torch.no_grad():
        for x in tqdm(chunks(data, chunk_size), desc=name, total=total,
                      disable=progress_disabled(), leave=False):
            x = x.to(device)
            if space == "feature":
                assert model is not None  # checked above: space='feature' needs the model
                features = getattr(model, "features", None)
                x = features(x) if callable(features) else model(x)
            yield x.flatten(1)


def embed_all(data: Any, model: nn.Module | None, space: str, chunk_size: int, name: str,
              device: torch.device) -> Tensor:
    """Every embedding of `data` as one (len(data), D) tensor."""
    return torch.cat(list(embed(data, model, space, chunk_size, name, device)))
