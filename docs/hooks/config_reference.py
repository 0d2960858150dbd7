"""mkdocs hook: fill docs/reference/config.md from the config schema's dataclasses.

Each section of `betaweighter.experiment.sections.Config` becomes a table of its keys: the
type, the default, the checked range or the registered names, and the comment written
above the field in the source, then the ``help`` line of its metadata (an option that a
component declares and the field mirrors: described where it is declared).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any

MARKER = "<!-- config-reference -->"


def _comments(cls: type) -> dict[str, str]:
    """Field name -> the comment lines directly above it (or at the end of its line)."""
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"\s+(\w+)\s*:", line)
        if match and not stripped.startswith(("def ", "@")):
            trailing = line.split("#", 1)[1].strip() if "#" in line and '"#' not in line else ""
            if trailing.startswith(("type:", "noqa")):
                trailing = ""
            out[match.group(1)] = " ".join(pending + ([trailing] if trailing else []))
        if stripped and not stripped.startswith("#"):
            pending = []
    return out


def _type(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " / ".join(repr(a) for a in typing.get_args(tp))
    text = str(tp).replace("typing.", "")
    text = re.sub(r"<class '(\w+)'>", r"\1", text)
    return text.replace("NoneType", "None")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        return "required"
    return f"`{value!r}`"


def _checks(f: dataclasses.Field) -> str:
    parts = []
    if "registry" in f.metadata:
        parts.append("one of " + ", ".join(f"`{n}`" for n in f.metadata["registry"].names()))
    if "range" in f.metadata:
        lo, hi, lo_open, hi_open = (list(f.metadata["range"]) + [None, None, False, False])[:4]
        left = "(" if lo_open or lo is None else "["
        right = ")" if hi_open or hi is None else "]"
        parts.append(f"in {left}{'-inf' if lo is None else lo}, "
                     f"{'inf' if hi is None else hi}{right}")
    return "; ".join(parts)


def _section(cls: type, prefix: str, rows: list[str], subsections: list[tuple]) -> None:
    hints = typing.get_type_hints(cls)
    notes = _comments(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            subsections.append((tp, key))
            continue
        help_line = f.metadata.get("help", "")  # a mirrored option's own help line
        text = " ".join(x for x in (notes.get(f.name, ""), help_line, _checks(f)) if x)
        rows.append(f"| `{key}` | `{_type(tp)}` | {_default(f)} | {text.replace('|', '/')} |")


def reference() -> str:
    from betaweighter.experiment.sections import Config

    out, queue = [], [(t, f.name) for f in dataclasses.fields(Config)
                      for t in [typing.get_type_hints(Config)[f.name]]]
    while queue:
        cls, key = queue.pop(0)
        rows: list[str] = []
        nested: list[tuple] = []
        _section(cls, key, rows, nested)
        if rows:
            out += [f"## `{key}`", "", "| key | type | default | what it does |",
                    "| --- | --- | --- | --- |", *rows, ""]
        queue[0:0] = nested
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, reference())
    return markdown
