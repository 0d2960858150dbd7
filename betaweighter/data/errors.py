"""The two ways a dataset on disk can fail, each with a message that says how to fix it."""

from __future__ import annotations

from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file or folder is missing. The message names the expected path and how to
    obtain the data; nothing is ever downloaded unless the user asks for it."""

    def __init__(self, name: str, path: str | Path, how: str) -> None:
        self.path = Path(path)
        super().__init__(f"{name} not found: expected {self.path}. {how}")


class CorruptDatasetError(ValueError):
    """A dataset file exists but cannot be what it claims (truncated, wrong size, labels out
    of range, an undecodable image). Raised instead of returning garbage."""

    def __init__(self, path: str | Path, problem: str, how: str = "") -> None:
        self.path = Path(path)
        tail = f" {how}" if how else ""
        super().__init__(f"{self.path}: {problem}.{tail}")
