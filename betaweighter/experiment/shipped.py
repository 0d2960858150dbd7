"""The configs that ship inside the package (``betaweighter/configs``), found with
`importlib.resources` so they work from a wheel as well as from a source checkout."""

from __future__ import annotations

from contextlib import AbstractContextManager
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from pathlib import Path

from betaweighter.errors import ConfigError

__all__ = ["config_file", "shipped_configs"]


def _root() -> Traversable:
    return files("betaweighter") / "configs"


def _walk(node: Traversable, prefix: str = "") -> list[tuple[str, Traversable]]:
    out = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            out += _walk(child, f"{prefix}{child.name}/")
        elif child.name.endswith(".yaml"):
            out.append((f"{prefix}{child.name[:-5]}", child))
    return out


def shipped_configs() -> list[tuple[str, str]]:
    """(name, first line of its header comment) for every shipped config."""
    out = []
    for name, item in _walk(_root()):
        first = next((line.lstrip("# ").strip() for line in item.read_text().splitlines()
                      if line.startswith("#")), "")
        out.append((name, first))
    return out


def config_file(name_or_path: str) -> AbstractContextManager[Path]:
    """A context manager giving the path of a config: an existing file as given, else a
    shipped config by name (``demo``, ``stl10/bdw``, with or without ``.yaml``). A folder
    of the same name (say, the ``demo`` output of an earlier run) does not hide a shipped
    config; a file does."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return _Given(path)
    name = name_or_path[:-5] if name_or_path.endswith(".yaml") else name_or_path
    for shipped, item in _walk(_root()):
        if shipped == name:
            return as_file(item)
    if path.exists():  # a folder, or something else that is not a config: say so
        return _Given(path)
    raise ConfigError(f"config file {name_or_path!r} does not exist, and no shipped config "
                      "has that name (see `betaweighter configs`)")


class _Given(AbstractContextManager):
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        return None
