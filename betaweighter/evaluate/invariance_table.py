"""The result of an invariance measurement: one row per (transform, parameter).

Columns: ``transform``, ``param`` (readable parameter values), ``level`` (one number per
parameter, the x axis of a curve: the angle, the factor, the shift as a fraction of the
side, ...), ``similarity`` (mean over images of the Mahalanobis-normalised cosine),
``distance`` (mean Mahalanobis distance) and ``count`` (images with a finite value).
`InvarianceTable.summary` averages the rows of each transform, which is the paper's score
(the mean of the k-point curve; arXiv:2111.11398).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from betaweighter.io import atomic_write_text

__all__ = ["COLUMNS", "InvarianceTable"]

COLUMNS = ("transform", "param", "level", "similarity", "distance", "count")
SUMMARY_COLUMNS = ("transform", "similarity", "distance", "params", "images")


class InvarianceTable:
    """Rows of (transform, param, level, similarity, distance, count), in measuring order,
    with the `protocol` they were measured under and free-form `info`."""

    def __init__(self, rows: Iterable[dict[str, Any]], protocol: str = "v2",
                 info: dict[str, Any] | None = None) -> None:
        self.rows = [{c: row[c] for c in COLUMNS} for row in rows]
        for row in self.rows:
            row["level"] = float(row["level"])
            row["similarity"] = float(row["similarity"])
            row["distance"] = float(row["distance"])
            row["count"] = int(row["count"])
        self.protocol = protocol
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return (f"InvarianceTable({len(self.rows)} rows, {len(self.transforms)} transforms, "
                f"protocol={self.protocol!r})")

    @property
    def transforms(self) -> list[str]:
        """The transforms in the table, in measuring order."""
        return list(dict.fromkeys(r["transform"] for r in self.rows))

    def curve(self, transform: str) -> tuple[np.ndarray, np.ndarray]:
        """(levels, similarities) of one transform, sorted by level; rows with the same
        level (a 2-D grid seen by its magnitude) are averaged."""
        rows = [r for r in self.rows if r["transform"] == transform]
        if not rows:
            raise KeyError(f"no transform {transform!r} in the table; it has {self.transforms}")
        levels = np.array([r["level"] for r in rows])
        sims = np.array([r["similarity"] for r in rows])
        unique = np.unique(levels)
        means = np.array([np.nanmean(sims[levels == u]) if np.isfinite(sims[levels == u]).any()
                          else math.nan for u in unique])
        return unique, means

    def summary(self) -> list[dict[str, Any]]:
        """Per transform: the mean similarity and distance over its rows (NaN rows left
        out), the number of parameter values and the fewest images behind a row."""
        out = []
        for name in self.transforms:
            rows = [r for r in self.rows if r["transform"] == name]
            sims = np.array([r["similarity"] for r in rows])
            dists = np.array([r["distance"] for r in rows])
            out.append({"transform": name, "similarity": _nanmean(sims),
                        "distance": _nanmean(dists), "params": len(rows),
                        "images": min(r["count"] for r in rows)})
        return out

    def similarity(self, transform: str) -> float:
        """The summary similarity of one transform."""
        for row in self.summary():
            if row["transform"] == transform:
                return float(row["similarity"])
        raise KeyError(f"no transform {transform!r} in the table; it has {self.transforms}")

    def to_csv(self, path: str | Path | None = None, summary: bool = False) -> str:
        """The rows (or, with `summary`, the per-transform summary) as CSV text, written
        atomically to `path` when given."""
        columns, rows = (SUMMARY_COLUMNS, self.summary()) if summary else (COLUMNS, self.rows)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row[k]) for k in columns})
        text = buffer.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def read_csv(cls, path: str | Path, protocol: str = "v2") -> InvarianceTable:
        """Read a table written by `to_csv` (empty cells are NaN)."""
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path} is not an invariance table: it lacks columns "
                                 f"{missing}")
            rows = [{**r, **{c: (r[c] if r[c] != "" else "nan")
                             for c in ("level", "similarity", "distance")}} for r in reader]
        return cls(rows, protocol)

    def format(self) -> str:
        """The summary as aligned text, one line per transform."""
        lines = [f"{'transform':<14}{'similarity':>12}{'distance':>12}{'params':>8}"]
        for r in self.summary():
            lines.append(f"{r['transform']:<14}{r['similarity']:>12.3f}{r['distance']:>12.2f}"
                         f"{r['params']:>8d}")
        return "\n".join(lines)


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return value
