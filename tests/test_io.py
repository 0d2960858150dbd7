"""Atomic writes and strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from betaweighter.io import atomic_write_bytes, atomic_write_text, jsonable, save_array, write_json


def test_json_is_strict_nan_becomes_null(tmp_path):
    payload = {"a": math.nan, "b": np.float32(1.5), "c": torch.tensor([1, 2]),
               "d": np.arange(3), "e": Path("/x"), "f": [math.inf, 2]}
    path = write_json(tmp_path / "out" / "x.json", payload)
    back = json.loads(path.read_text())
    assert back == {"a": None, "b": 1.5, "c": [1, 2], "d": [0, 1, 2], "e": "/x",
                    "f": [None, 2]}
    assert jsonable({1: np.int64(3)}) == {"1": 3}


def test_atomic_writes_replace_and_leave_no_temporary_file(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == [
        "f.txt"]
    save_array(tmp_path / "a.npy", np.arange(4.0))
    assert np.load(tmp_path / "a.npy").tolist() == [0.0, 1.0, 2.0, 3.0]


def test_atomic_link_keeps_the_linked_bytes_when_the_source_is_replaced(tmp_path, monkeypatch):
    from betaweighter.io import atomic_link, atomic_write_bytes

    last = atomic_write_bytes(tmp_path / "last.pt", b"epoch 3")
    best = atomic_link(last, tmp_path / "best.pt")
    assert best.read_bytes() == b"epoch 3" and best.stat().st_ino == last.stat().st_ino
    atomic_write_bytes(last, b"epoch 4")
    assert best.read_bytes() == b"epoch 3" and last.read_bytes() == b"epoch 4"
    atomic_link(last, best)  # replaces an existing link
    assert best.read_bytes() == b"epoch 4"

    def no_links(*args):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr("os.link", no_links)  # a file system without hard links: a copy
    atomic_write_bytes(last, b"epoch 5")
    atomic_link(last, best)
    assert best.read_bytes() == b"epoch 5" and best.stat().st_ino != last.stat().st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
