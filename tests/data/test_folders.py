"""Users' own image folders as pool and target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import betaweighter as bw
from betaweighter.errors import DatasetNotFoundError


def _write(folder: Path, n: int, colour: int, ext: str = "png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (40 + i, 36), (colour, i * 10, 255 - colour)).save(folder / f"{i}.{ext}")


@pytest.fixture()
def folders(tmp_path: Path) -> Path:
    _write(tmp_path / "pool" / "a", 5, 10)
    _write(tmp_path / "pool" / "nested" / "deeper", 4, 90, "jpg")
    Image.new("L", (30, 30), 128).save(tmp_path / "pool" / "grey.png")  # grey: made RGB
    for c, name in enumerate(["cat", "dog", "eel"]):
        _write(tmp_path / "target" / name, 10, 50 * c)
        _write(tmp_path / "test" / name, 2, 50 * c)
    return tmp_path


def test_pool_is_every_image_in_the_tree(folders):
    raw = bw.data.FolderRaw(folders / "pool", labelled=False)
    assert len(raw) == 10 and raw.targets is None
    grey = [f.name for f in raw.files].index("grey.png")  # files are sorted by path
    assert grey == 5 and raw[grey][0].shape == (3, 30, 30)  # grey, now 3 channels


def test_bundle_with_carved_test_split(folders):
    b = bw.data.image_folders(folders / "pool", folders / "target", resize=32, crop=28)
    assert len(b.pool) == 10 and b.pool[2][0].shape == (3, 28, 28) and b.pool[2][1] == 2
    assert b.num_classes == 3
    sizes = [len(b.target_train), len(b.target_val), len(b.test)]
    assert sizes == [3 * 4, 3 * 3, 3 * 3]  # 10 per class: 3 test, then 7 split 3.5 / 3.5
    for part in (b.target_train, b.target_val, b.test):
        assert np.bincount(bw.data.labels_of(part)).tolist() == [len(part) // 3] * 3
    all_idx = np.concatenate([b.splits[k] for k in ("val_train", "val_test", "test")])
    assert sorted(all_idx.tolist()) == list(range(30))


def test_bundle_with_test_folder(folders):
    b = bw.data.image_folders(folders / "pool", folders / "target", test_root=folders / "test",
                              resize=32, crop=28, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert len(b.test) == 6 and len(b.target_train) + len(b.target_val) == 30
    assert bw.data.labels_of(b.test).tolist() == [0, 0, 1, 1, 2, 2]
    assert "test" not in b.splits


def test_missing_folders(folders, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="nope"):
        bw.data.image_folders(tmp_path / "nope", folders / "target")
    with pytest.raises(bw.data.DataError, match="no class sub-folders"):
        bw.data.image_folders(folders / "pool", folders / "pool" / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="empty"):
        bw.data.FolderRaw(tmp_path / "empty", labelled=False)
