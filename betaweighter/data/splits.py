"""Seeded, stratified splits of a labelled set, saved with a run so it can be repeated.

A split is a dict ``name -> sorted int64 index array`` into one base dataset. It is
produced once from a seed, written next to the run's results (`save_splits`) and read back
(`load_splits`) to rebuild exactly the same target sets later.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from betaweighter.errors import CorruptDatasetError
from betaweighter.io import atomic_write_text

__all__ = ["SPLITS_FORMAT", "check_splits", "load_splits", "resolve_splits", "save_splits",
           "stratified_split"]

SPLITS_FORMAT = "betaweighter-splits-v1"


def stratified_split(
    labels: Any, sizes: Mapping[str, int | float | None], seed: int = 0
) -> dict[str, np.ndarray]:
    """Split the items of every class into named parts, in the order of `sizes`.

    Each size is an ``int`` (items per class), a ``float`` in (0, 1] (fraction of each
    class, rounded half up cumulatively so that fractions summing to 1 use every item) or ``None``
    (all items of the class not yet taken; only the last entry may be ``None``). Items
    left over are in no part. The result depends only on `labels`, `sizes` and `seed`.
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    names = list(sizes)
    if any(sizes[n] is None for n in names[:-1]):
        raise ValueError("only the last entry of sizes may be None (the rest of each class)")
    for name in names:
        s = sizes[name]
        if isinstance(s, float) and not 0.0 < s <= 1.0:
            raise ValueError(f"fraction for {name!r} must be in (0, 1], got {s}")
        if isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s < 0:
            raise ValueError(f"size for {name!r} must be >= 0, got {s}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        start, frac_total = 0, 0.0
        for name in names:
            s = sizes[name]
            if s is None:
                stop = len(members)
            elif isinstance(s, float):
                frac_total += s
                stop = math.floor(len(members) * min(frac_total, 1.0) + 0.5 + 1e-9)
            else:
                stop = start + int(s)
                if stop > len(members):
                    raise ValueError(
                        f"class {int(c)} has {len(members)} items but the split asks for "
                        f"{stop} ({dict(sizes)} per class); use smaller sizes"
                    )
            stop = max(stop, start)
            parts[name].append(members[start:stop])
            start = stop
    return {n: np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64)
            for n, p in parts.items()}


def save_splits(path: str | os.PathLike, splits: Mapping[str, Any],
                meta: Mapping[str, Any] | None = None) -> Path:
    """Write `splits` (and a `meta` dict: dataset, seed, sizes, ...) as JSON, atomically."""
    path = Path(path)
    doc = {
        "format": SPLITS_FORMAT,
        "meta": dict(meta or {}),
        "splits": {k: np.asarray(v, dtype=np.int64).tolist() for k, v in splits.items()},
    }
    return atomic_write_text(path, json.dumps(doc))


def load_splits(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by `save_splits`: (splits, meta)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"splits file not found: {path}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CorruptDatasetError(path, f"not valid JSON ({err})") from err
    if not isinstance(doc, dict) or doc.get("format") != SPLITS_FORMAT:
        raise CorruptDatasetError(path, f"not a betaweighter splits file (format "
                                        f"{SPLITS_FORMAT!r} expected)")
    splits = {k: np.asarray(v, dtype=np.int64) for k, v in doc["splits"].items()}
    return splits, dict(doc.get("meta", {}))


def check_splits(splits: Mapping[str, np.ndarray], size: int, names: tuple[str, ...],
                 source: str = "splits") -> None:
    """Fail clearly when reused splits do not fit the data they are applied to."""
    missing = [n for n in names if n not in splits]
    if missing:
        raise ValueError(f"{source} lacks the parts {missing}; it has {sorted(splits)}")
    seen = np.zeros(size, dtype=bool)
    for n in names:
        idx = np.asarray(splits[n])
        if idx.size and (idx.min() < 0 or idx.max() >= size):
            raise ValueError(
                f"{source}[{n!r}] has indices outside [0, {size}): was it made for "
                "another version of the dataset?"
            )
        if seen[idx].any():
            raise ValueError(f"{source}[{n!r}] overlaps an earlier part")
        seen[idx] = True


SplitsArg = str | os.PathLike | Mapping[str, Any] | None


def resolve_splits(splits: SplitsArg, make: Callable[[], dict[str, np.ndarray]], size: int,
                   names: tuple[str, ...], source: str) -> tuple[dict[str, np.ndarray], str]:
    """The builders' ``splits=`` argument: ``None`` makes fresh splits with `make`, a path
    reads a `save_splits` file, a mapping is used as given. Checked against the data, and
    returned with a note of where they came from (for the run's records)."""
    if splits is None:
        parts, origin = make(), "seed"
    elif isinstance(splits, (str, os.PathLike)):
        parts, origin = load_splits(splits)[0], str(splits)
    else:
        parts = {k: np.asarray(v, dtype=np.int64) for k, v in splits.items()}
        origin = "given"
    check_splits(parts, size, names, source)
    return {n: parts[n] for n in names}, origin
