"""Find the image files of a folder tree, following symbolic links safely.

Links are followed (a class folder or a pool sub-folder may well be a link to the real
data), but each real file is taken once: a file reached by several paths (through links,
or hard links) keeps its path that passes through no link, or else the first in sorted
order, and takes that path's place in the order. A link to a folder that contains it (``a/up ->
..``) would make the walk loop and is refused with one `DataError` naming the link, as is a
broken link. Files are identified by device and inode, so hard links count as one file;
`check_disjoint` uses the same identities to refuse a file in two labelled splits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from betaweighter.errors import DataError

__all__ = ["FileId", "check_disjoint", "file_id", "scan_images"]

FileId = tuple[int, int] | str


def file_id(path: str | os.PathLike) -> FileId:
    """What makes two paths the same file: (device, inode), or the real path where the
    file system reports no inode numbers."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)


def scan_images(folder: str | os.PathLike, extensions: Sequence[str],
                order: Callable[[str, str], Any] | None = None) -> list[tuple[str, FileId]]:
    """(path, identity) of every image file under `folder`, each real file once.

    A file is an image when its name ends with one of `extensions` (any case). The result
    is sorted by ``order(directory, name)`` (default: the full path as a `Path`, which is
    how the pool has always been ordered); a file reached by several paths keeps the one
    through no link, else the first. Raises `DataError` for a link that loops back to a
    folder containing it, or that points nowhere, and for a folder it cannot read.
    """
    exts = tuple(e.lower() for e in extensions)
    found: list[tuple[str, str, bool]] = []  # (folder, name, reached through a link)
    stack: list[tuple[str, tuple[str, ...], bool]] = [(os.fspath(folder), (), False)]
    while stack:  # every path is walked (the order is fixed by the sort below, not here)
        directory, chain, linked = stack.pop()
        real = os.path.realpath(directory)
        chain = (*chain, real)  # the real folders walked through to get here
        for entry in _entries(directory):
            link = entry.is_symlink()
            if link:
                _check_link(entry, real, chain)
            if entry.is_dir():
                stack.append((entry.path, chain, linked or link))
            elif entry.name.lower().endswith(exts) and entry.is_file():
                found.append((directory, entry.name, linked or link))
    key = order or (lambda d, n: Path(d, n))
    found.sort(key=lambda f: key(f[0], f[1]))
    chosen: dict[FileId, tuple[int, str, bool]] = {}  # identity -> (position, path, linked)
    for position, (directory, name, linked) in enumerate(found):
        path = os.path.join(directory, name)
        ident = file_id(path)
        if ident not in chosen or (chosen[ident][2] and not linked):
            chosen[ident] = (position, path, linked)
    return [(path, ident) for ident, (_, path, _) in
            sorted(chosen.items(), key=lambda item: item[1][0])]


def _entries(directory: str) -> list[os.DirEntry]:
    """The entries of `directory`; an unreadable folder is a `DataError`, never skipped."""
    try:
        with os.scandir(directory) as it:
            return list(it)
    except OSError as err:
        raise DataError(f"cannot read the folder {directory} ({err.strerror or err}); fix "
                        "its permissions or move it out of the data") from None


def _check_link(entry: os.DirEntry, real: str, chain: tuple[str, ...]) -> None:
    """Refuse a broken link, and a link to a folder that (really, or along the walk)
    contains the folder `real` it sits in."""
    target = os.path.realpath(entry.path)
    if not os.path.exists(target):
        raise DataError(f"{entry.path} is a broken symbolic link (to "
                        f"{os.readlink(entry.path)}); fix or remove it")
    if entry.is_dir() and (target in chain or real == target
                           or real.startswith(target.rstrip(os.sep) + os.sep)):
        raise DataError(f"{entry.path} is a symbolic link to {target}, a folder that contains "
                        "it: scanning would loop and count every image many times. Remove "
                        "the link or point it outside that folder")


def check_disjoint(parts: Mapping[str, Sequence[str]], ids: Mapping[str, Sequence[FileId]],
                   what: str = "splits") -> None:
    """Refuse one image file in two of `parts` (name -> paths, with their `ids`): a test
    image that is also a training image, or an image with two labels. The `DataError`
    names both paths."""
    owner: dict[FileId, tuple[str, str]] = {}
    for name, paths in parts.items():
        for path, ident in zip(paths, ids[name]):
            if ident in owner and owner[ident][0] != name:
                other_name, other = owner[ident]
                same = "" if other == path else f" and {path}"
                raise DataError(
                    f"{other}{same} {'is' if not same else 'are'} one file, in both the "
                    f"{other_name!r} and the {name!r} {what}: an image must be in one only. "
                    "Remove one copy (or the link to it)")
            owner.setdefault(ident, (name, path))
