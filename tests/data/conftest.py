"""Tiny datasets written in the real on-disk formats, for the real loaders to read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ondisk import domain_colour, write_decathlon, write_stl10


@pytest.fixture(scope="session")
def stl10_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("stl10")
    return root, write_stl10(root)


@pytest.fixture(scope="session")
def decathlon_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_decathlon(tmp_path_factory.mktemp("vd"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never write to the user's real cache from a test."""
    monkeypatch.setenv("BETAWEIGHTER_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def stl10_writer():
    """`write_stl10(root, counts=...)`, for tests that need their own copy."""
    return write_stl10


@pytest.fixture(scope="session")
def vd_colour():
    """`domain_colour(domain)`: the mean colour written for each Decathlon domain."""
    return domain_colour
