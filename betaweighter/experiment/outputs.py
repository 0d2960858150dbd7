"""Where `betaweighter evaluate` and `invariance` write: beside the checkpoint, unless that
folder cannot be written (a read-only mount, a shared model store), then in the user cache.

The results (``eval_<task>.json``, invariance tables and plots) and the feature caches of a
checkpoint go to its folder. When a probe write there fails, they go instead to
``<cache>/outputs/<folder name>-<digest of its path>/`` (the cache is ``$BETAWEIGHTER_CACHE``
or ``~/.cache/betaweighter``), and a warning says so once per folder, so an evaluation never
fails only because its checkpoint lies in a read-only place.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

from betaweighter.data.cache import cache_dir

__all__ = ["output_folder"]

_log = logging.getLogger(__name__)
_warned: set[tuple[Path, Path]] = set()


def _writable(folder: Path) -> bool:
    """Whether a file can be created in `folder` (a real probe: permissions, read-only
    mounts and ownership all count, as they do for the writes that follow)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def output_folder(folder: str | Path) -> Path:
    """`folder` when a file can be written there; else its folder in the user cache (with a
    warning, once per process and folder)."""
    folder = Path(folder).resolve()
    if _writable(folder):
        return folder
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
    chosen = cache_dir() / "outputs" / f"{folder.name}-{digest}"
    chosen.mkdir(parents=True, exist_ok=True)
    if (folder, chosen) not in _warned:
        _warned.add((folder, chosen))
        _log.warning("%s cannot be written: the results and feature caches of its "
                     "checkpoint go to %s", folder, chosen)
    return chosen
