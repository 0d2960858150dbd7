"""The errors a user can fix, all under one base class.

Every error here carries a message that names the thing at fault (a config key, a file, a
run directory) and says how to fix it. The command line prints such an error as one
``betaweighter: error: ...`` line and exits with status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

__all__ = [
    "BetaweighterError",
    "CheckpointError",
    "ConfigError",
    "CorruptDatasetError",
    "DataError",
    "DatasetNotFoundError",
    "LossShapeError",
    "NonFiniteLossError",
    "OutputError",
    "RunLockedError",
    "SharedParametersError",
    "quote",
]

#: The most characters of a value that an error message quotes.
QUOTE_LIMIT = 200

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxdict, _repr.maxtuple = 3, 8, 6, 8
_repr.maxstring, _repr.maxother = 120, 120


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """`value` as a message quotes it: its repr, cut to `limit` characters. Nested and long
    values are abbreviated without being expanded, so a YAML alias bomb (a few lines that
    expand to millions of items) costs nothing to quote."""
    text = _repr.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class BetaweighterError(Exception):
    """Base class of every error whose message tells the user what to change."""


class ConfigError(BetaweighterError, ValueError):
    """A config problem: unknown key, wrong type, out-of-range value, a device that is not
    there. The message names the dotted key and what is allowed."""


class CheckpointError(BetaweighterError, ValueError):
    """A checkpoint or run directory that cannot be found, read or matched to its model."""


class DatasetNotFoundError(BetaweighterError, FileNotFoundError):
    """A dataset file or folder is missing. The message names the expected path and how to
    obtain the data; nothing is ever downloaded unless the user asks for it."""

    def __init__(self, name: str, path: str | Path, how: str) -> None:
        self.path = Path(path)
        super().__init__(f"{name} not found: expected {self.path}. {how}")


class CorruptDatasetError(BetaweighterError, ValueError):
    """A dataset file exists but cannot be what it claims (truncated, wrong size, labels out
    of range, an undecodable image). Raised instead of returning garbage."""

    def __init__(self, path: str | Path, problem: str, how: str = "") -> None:
        self.path = Path(path)
        tail = f" {how}" if how else ""
        super().__init__(f"{self.path}: {problem}.{tail}")


class DataError(BetaweighterError, ValueError):
    """Data that exists and reads fine but cannot serve the task asked of it: an empty class
    folder, too few classes for an episode, a test class the training split lacks."""


class OutputError(BetaweighterError, OSError):
    """A file or folder that betaweighter must write cannot be: a full disk, a read-only
    file system, a path below a file, a folder that cannot be created. The message names
    the path and the fix; `errno` keeps the operating system's error number."""

    def __init__(self, path: str | Path, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = Path(path)
        self.errno = errno


class NonFiniteLossError(BetaweighterError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


class RunLockedError(BetaweighterError):
    """Another process is writing to the same run directory."""


class LossShapeError(BetaweighterError, ValueError):
    """A per-sample loss that does not give one loss per row (a scalar, a wrong shape), or
    rows that do not line up with the instances: ``copies`` consecutive rows (rotations,
    views) per indexed instance."""


class SharedParametersError(BetaweighterError, ValueError):
    """A target network (momentum encoder, EMA teacher) that shares parameters or buffers
    with the online network it is meant to trail."""
