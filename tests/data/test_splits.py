"""Stratified, seeded splits and their files."""

from __future__ import annotations

import numpy as np
import pytest

from betaweighter.data.splits import check_splits, load_splits, save_splits, stratified_split
from betaweighter.errors import CorruptDatasetError

LABELS = np.repeat(np.arange(4), [10, 10, 7, 3])


def test_counts_per_class_and_disjoint():
    parts = stratified_split(LABELS, {"a": 2, "b": 1, "rest": None}, seed=0)
    for c, n in enumerate([10, 10, 7, 3]):
        assert (LABELS[parts["a"]] == c).sum() == 2
        assert (LABELS[parts["b"]] == c).sum() == 1
        assert (LABELS[parts["rest"]] == c).sum() == n - 3
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(len(LABELS)))
    assert all(np.all(np.diff(p) > 0) for p in parts.values())  # sorted, unique


def test_fractions_round_half_up_and_use_everything():
    parts = stratified_split(LABELS, {"a": 0.5, "b": 0.5}, seed=0)
    assert [(LABELS[parts["a"]] == c).sum() for c in range(4)] == [5, 5, 4, 2]
    assert len(parts["a"]) + len(parts["b"]) == len(LABELS)


def test_seeded():
    a = stratified_split(LABELS, {"a": 2}, seed=5)["a"]
    assert np.array_equal(a, stratified_split(LABELS, {"a": 2}, seed=5)["a"])
    assert not np.array_equal(a, stratified_split(LABELS, {"a": 2}, seed=6)["a"])


def test_bad_sizes():
    with pytest.raises(ValueError, match="class 3 has 3 items"):
        stratified_split(LABELS, {"a": 4}, seed=0)
    with pytest.raises(ValueError, match="only the last"):
        stratified_split(LABELS, {"a": None, "b": 1}, seed=0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        stratified_split(LABELS, {"a": 1.5}, seed=0)


def test_file_round_trip_and_errors(tmp_path):
    parts = stratified_split(LABELS, {"a": 2, "b": None}, seed=1)
    path = save_splits(tmp_path / "deep" / "splits.json", parts, {"seed": 1})
    loaded, meta = load_splits(path)
    assert meta == {"seed": 1} and all(np.array_equal(loaded[k], parts[k]) for k in parts)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CorruptDatasetError, match="bad.json"):
        load_splits(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"splits": {}}')
    with pytest.raises(CorruptDatasetError, match="not a betaweighter splits file"):
        load_splits(tmp_path / "other.json")
    with pytest.raises(ValueError, match="lacks the parts"):
        check_splits(parts, len(LABELS), ("a", "c"))
