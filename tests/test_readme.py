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
