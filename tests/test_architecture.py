"""The layout ARCHITECTURE.md documents, checked on the source: imports flow one way
(base < data < pretext < weights < meta < pruning < models < evaluate < experiment < cli),
including imports inside functions and under TYPE_CHECKING, and every module declares an
``__all__`` whose names exist."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "betaweighter"
ROOMS = ["base", "data", "pretext", "weights", "meta", "pruning", "models", "evaluate",
         "experiment", "cli"]
BASE = {"errors", "io", "runtime", "checkpoint", "registry"}
MODELS = {"models", "published"}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str | None:
    """The room of a ``betaweighter`` module; "package" for the lazy top-level package."""
    parts = module.split(".")
    if parts[0] != "betaweighter":
        return None
    if len(parts) == 1:
        return "package"
    head = parts[1]
    if head in BASE:
        return "base"
    if head in MODELS:
        return "models"
    if head in ("cli", "commands", "__main__"):
        return "cli"
    return head


def _imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; use the absolute name")
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_room():
    assert {_room(_module(p)) for p in MODULES} <= {*ROOMS, "package"}


def _against_the_order(path: Path, me: str | None) -> list[str]:
    wrong = []
    for target, line in _imports(path):
        room = _room(target)
        if room in (None, me, "package") or me == "package":
            continue  # `betaweighter` itself: lazy re-exports and __version__
        if ROOMS.index(room) > ROOMS.index(me):
            wrong.append(f"line {line}: {target} ({room})")
    return wrong


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module(p))
def test_imports_flow_one_way(path):
    me = _room(_module(path))
    wrong = _against_the_order(path, me)
    assert not wrong, f"{_module(path)} ({me}) imports against the documented order: {wrong}"


@pytest.mark.parametrize("path", [p for p in MODULES if p.name != "__main__.py"],
                         ids=lambda p: _module(p))
def test_every_module_declares_all(path):
    module = importlib.import_module(_module(path))
    assert isinstance(getattr(module, "__all__", None), list), f"{module.__name__}: no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{module.__name__}.__all__ names what it lacks: {missing}"


def test_the_checker_sees_a_wrong_import_even_inside_a_function(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from betaweighter.errors import ConfigError\n\n\ndef f():\n"
                   "    from betaweighter.experiment import config\n")
    assert _against_the_order(bad, "data") == ["line 5: betaweighter.experiment (experiment)"]
    assert _against_the_order(bad, "cli") == []
