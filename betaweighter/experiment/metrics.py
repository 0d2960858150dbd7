"""metrics.csv: one row per epoch, rewritten atomically so a crash never truncates it."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from betaweighter.io import atomic_write_text

__all__ = ["MetricsLog"]


class MetricsLog:
    """Collects per-epoch rows and keeps ``path`` in sync (all columns, in first-seen order)."""

    def __init__(self, path: str | Path, rows: list[dict[str, Any]] | None = None) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows or []]
        if self.rows:
            self._write()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))
        self._write()

    def _write(self) -> None:
        columns: list[str] = []
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: _fmt(v) for k, v in r.items()})
        atomic_write_text(self.path, out.getvalue())


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)
