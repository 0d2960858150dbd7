"""Where betaweighter keeps the things it builds once and reuses (the demo set, dataset
statistics): ``$BETAWEIGHTER_CACHE`` if set, else ``~/.cache/betaweighter``."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from betaweighter.io import write_json

__all__ = ["CACHE_ENV", "cache_dir", "memoize_json"]

CACHE_ENV = "BETAWEIGHTER_CACHE"


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache directory (created if needed): `path` when given, else the environment
    variable ``BETAWEIGHTER_CACHE``, else ``~/.cache/betaweighter``."""
    if path is None:
        path = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "betaweighter"
    out = Path(path).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    return out


def memoize_json(key: Mapping[str, Any], compute: Callable[[], Any], folder: str,
                 path: str | os.PathLike | None = None) -> Any:
    """``compute()``, stored as JSON under ``cache_dir(path)/folder/`` by a hash of `key`
    (which must name everything the result depends on) and read back next time. A file
    that cannot be read is recomputed, never trusted."""
    digest = hashlib.sha1(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:16]
    file = cache_dir(path) / folder / f"{digest}.json"
    if file.is_file():
        try:
            return json.loads(file.read_text())["value"]
        except (json.JSONDecodeError, KeyError, OSError):
            pass
    value = compute()
    write_json(file, {"key": dict(key), "value": value}, indent=None)
    return value
