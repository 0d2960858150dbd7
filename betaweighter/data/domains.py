"""The pool's known domains, read from a CSV file: which images are in-domain, and of what
kind.

A user who knows where the pool images come from (some from the target domain, some
scraped from elsewhere) lists them so a run can measure whether the learnt weights tell
them apart: the AUROC of the mean weights and the in-domain share of what was pruned,
overall and per kind. The file has a header row and one row per pool image::

    path,in_domain,kind
    cats/0001.png,true,
    web/0001.jpg,no,web
    noise/0001.png,0,noise

``path`` is relative to the pool folder (or absolute); ``in_domain`` is one of true/false,
1/0, yes/no (any case); the optional ``kind`` names a group of images (default
``in-domain`` or ``out-of-domain``). Every pool image must be listed: a measurement over
part of the pool would not be the run's.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from betaweighter.data.scan import FileId, file_id
from betaweighter.errors import DataError, DatasetNotFoundError

__all__ = ["DEFAULT_KINDS", "RESERVED_KINDS", "read_domains"]

DEFAULT_KINDS = ("out-of-domain", "in-domain")  # indexed by in_domain
# Kinds whose diagnostics columns (auroc_<kind>, pruned_<kind>) would clash with others.
RESERVED_KINDS = ("in_domain", "in_domain_share")
_COLUMNS = ("path", "in_domain", "kind")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
_KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def read_domains(csv_path: str | os.PathLike, pool_root: str | os.PathLike,
                 files: Sequence[str | os.PathLike], ids: Sequence[FileId] | None = None
                 ) -> tuple[np.ndarray, list[str]]:
    """(in_domain bool array, kind per image) for the pool images `files` under
    `pool_root`, from the CSV file `csv_path` (see the module docstring).

    `ids` are the files' identities (`scan.file_id`; computed when None): a listed path
    matches the pool image that is the same file, whichever link or spelling reaches it.
    Every problem is one `DataError` naming the file and the line: a missing column, a
    path that is not a pool image, a bad boolean, a path listed twice, a kind marked both
    in- and out-of-domain, or pool images the file does not list (the first is named).
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DatasetNotFoundError("domains file", csv_path.absolute(),
                                   "data.options.domains names a CSV file with the header "
                                   "path,in_domain[,kind]; a relative path is taken from the "
                                   "current working directory")
    root = Path(pool_root).expanduser()
    index = {ident: i for i, ident in enumerate(ids if ids is not None else map(file_id, files))}
    in_domain = np.zeros(len(files), bool)
    kinds: list[str | None] = [None] * len(files)
    lines: dict[int, int] = {}  # pool index -> line that listed it
    kind_side: dict[str, tuple[bool, int]] = {}
    where = f"{csv_path}"
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            _check_header(header, where)
            col = {name: header.index(name) for name in _COLUMNS if name in header}
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{where}, line {line}: {len(row)} fields where the header "
                                    f"has {len(header)}; quote paths that contain commas")
                raw_path, flag = row[col["path"]].strip(), row[col["in_domain"]].strip()
                i = _pool_index(raw_path, root, index, f"{where}, line {line}")
                if i in lines:
                    raise DataError(f"{where}, line {line}: {raw_path} is listed twice (also "
                                    f"on line {lines[i]}); keep one row per image")
                value = _boolean(flag, f"{where}, line {line}")
                kind = row[col["kind"]].strip() if "kind" in col else ""
                kind = kind or DEFAULT_KINDS[value]
                _check_kind(kind, value, line, kind_side, where)
                lines[i], in_domain[i], kinds[i] = line, value, kind
    except UnicodeDecodeError as err:
        raise DataError(f"{where} is not UTF-8 text ({err}); save it as UTF-8 CSV") from None
    except csv.Error as err:
        raise DataError(f"{where}: not valid CSV ({err})") from None
    missing = [i for i, k in enumerate(kinds) if k is None]
    if missing:
        raise DataError(f"{where} does not list {len(missing)} of the {len(files)} pool images "
                        f"under {root}, the first {files[missing[0]]}; list every pool image "
                        "(path,in_domain) or remove the unlisted ones from the pool")
    return in_domain, [str(k) for k in kinds]


def _check_header(header: list[str], where: str) -> None:
    lacking = [c for c in ("path", "in_domain") if c not in header]
    unknown = [c for c in header if c not in _COLUMNS]
    dup = sorted({c for c in header if header.count(c) > 1})
    if lacking or unknown or dup:
        problem = (f"lacks the columns {lacking}" if lacking else
                   f"has unknown columns {unknown}" if unknown else f"repeats {dup}")
        raise DataError(f"{where}, line 1: the header {problem}; it must be path,in_domain "
                        "and optionally kind")


def _pool_index(raw: str, root: Path, index: dict[FileId, int], where: str) -> int:
    if not raw:
        raise DataError(f"{where}: the path is empty; give the image's path relative to {root}")
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else root / path
    try:
        i = index.get(file_id(path)) if path.is_file() else None
    except OSError:
        i = None
    if i is None:
        raise DataError(f"{where}: {raw} is not an image of the pool {root} (looked for "
                        f"{path}); fix the path (relative to the pool folder) or drop the row")
    return i


def _boolean(text: str, where: str) -> bool:
    low = text.lower()
    if low in _TRUE or low in _FALSE:
        return low in _TRUE
    raise DataError(f"{where}: in_domain is {text!r}; write true/false, 1/0 or yes/no")


def _check_kind(kind: str, value: bool, line: int, seen: dict[str, tuple[bool, int]],
                where: str) -> None:
    if not _KIND.fullmatch(kind) or kind in RESERVED_KINDS:
        raise DataError(f"{where}, line {line}: kind {kind!r} cannot name a metrics column; "
                        "use letters, digits and _ . + - (not in_domain or in_domain_share)")
    side = seen.setdefault(kind, (value, line))
    if side[0] != value:
        raise DataError(f"{where}, line {line}: kind {kind!r} is marked "
                        f"{'in' if value else 'out-of'}-domain here but "
                        f"{'in' if side[0] else 'out-of'}-domain on line {side[1]}; a kind "
                        "is one or the other")
