"""Every YAML block in the README and the docs pages is accepted, as written, by the schema
that reads it, so the documented configuration cannot drift from the code again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from betaweighter.experiment.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        found += [(f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}",
                   m.group(1)) for m in BLOCK.finditer(text)]
    return found


def test_the_pages_have_yaml_blocks():
    assert len(_blocks()) >= 8


@pytest.mark.parametrize(("line", "text"), _blocks(), ids=lambda v: str(v)[:40])
def test_each_yaml_block_loads_through_the_schema(line, text, tmp_path):
    data = yaml.safe_load(text)
    assert isinstance(data, dict), f"{line}: a YAML block must be a mapping"
    path = tmp_path / "block.yaml"
    path.write_text(text, encoding="utf-8")
    if "models" in data and "tasks" in data:  # a `betaweighter suite` file
        from betaweighter.experiment.suite_spec import load_suite

        load_suite(path)
    else:
        load_config(path)


PYTHON = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_python_blocks_parse_and_import_what_exists():
    """Every Python block in the README and the docs parses, and every name it imports from
    betaweighter exists (the blocks use the user's own data, so they are not run)."""
    import ast
    import importlib

    import betaweighter as bw

    missing = []
    for page in PAGES:
        for m in PYTHON.finditer(page.read_text(encoding="utf-8")):
            if m.group(1).lstrip().startswith("--8<--"):
                continue  # an example file included whole: tests/test_examples.py runs it
            for node in ast.walk(ast.parse(m.group(1))):
                if (isinstance(node, ast.ImportFrom) and node.module
                        and node.module.startswith("betaweighter")):
                    module = importlib.import_module(node.module)
                    missing += [f"{page.name}: {node.module}.{a.name}" for a in node.names
                                if not hasattr(module, a.name)]
                elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                      and node.value.id == "bw" and not hasattr(bw, node.attr)):
                    missing.append(f"{page.name}: bw.{node.attr}")
    assert not missing, missing
