"""Folder scanning follows links, each real file once, and refuses loops and duplicates."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import betaweighter as bw
from betaweighter.data.images import IMAGE_EXTENSIONS
from betaweighter.errors import DataError


def _images(folder: Path, n: int, colour: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (10, 10), (colour, 20 * i, 90)).save(folder / f"{i}.png")


@pytest.fixture()
def target(tmp_path: Path) -> Path:
    _images(tmp_path / "target" / "a", 4, 10)
    _images(tmp_path / "target" / "b", 4, 200)
    return tmp_path / "target"


def test_a_link_loop_in_a_labelled_folder_is_refused_naming_the_link(target):
    os.symlink("..", target / "a" / "up")  # target/a/up -> target: a loop
    with pytest.raises(DataError, match=r"a/up is a symbolic link to .*target, a folder "
                                        "that contains it"):
        bw.data.FolderRaw(target)
    with pytest.raises(DataError, match="a/up"):
        bw.data.image_folders(target, target, mean=(0.5,) * 3, std=(0.2,) * 3)


def test_a_link_loop_in_the_pool_is_refused(tmp_path):
    _images(tmp_path / "pool" / "x", 3)
    os.symlink(tmp_path / "pool", tmp_path / "pool" / "x" / "again")
    with pytest.raises(DataError, match=r"x/again is a symbolic link"):
        bw.data.FolderRaw(tmp_path / "pool", labelled=False)


def test_two_links_that_loop_through_each_other_are_refused(tmp_path):
    _images(tmp_path / "pool" / "p", 2)
    _images(tmp_path / "pool" / "q", 2)
    os.symlink("../q", tmp_path / "pool" / "p" / "to_q")
    os.symlink("../p", tmp_path / "pool" / "q" / "to_p")
    with pytest.raises(DataError, match="is a symbolic link"):
        bw.data.FolderRaw(tmp_path / "pool", labelled=False)


def test_linked_pool_folders_are_followed_and_each_file_counted_once(tmp_path):
    _images(tmp_path / "elsewhere", 3)
    _images(tmp_path / "pool" / "own", 2)
    os.symlink(tmp_path / "elsewhere", tmp_path / "pool" / "linked")  # a real sub-folder
    os.symlink("own", tmp_path / "pool" / "again")  # own/ a second time, sorted first
    os.link(tmp_path / "pool" / "own" / "0.png", tmp_path / "pool" / "hard.png")
    raw = bw.data.FolderRaw(tmp_path / "pool", labelled=False)
    names = [str(p.relative_to(tmp_path / "pool")) for p in raw.files]
    # own/1.png is also again/1.png, which sorts first: the path through no link is kept.
    # The hard link is own/0.png too; neither path has a link, so the first sorted is kept
    assert names == ["hard.png", "linked/0.png", "linked/1.png", "linked/2.png", "own/1.png"]
    assert len(set(raw.ids)) == len(raw)


def test_one_file_in_two_classes_is_refused(target):
    os.symlink(target / "a" / "0.png", target / "b" / "stolen.png")
    with pytest.raises(DataError, match=r"a/0\.png and .*b/stolen\.png are one file, in "
                                        "both the 'a' and the 'b' class folders"):
        bw.data.FolderRaw(target)


def test_a_linked_copy_within_one_class_counts_once(target):
    os.symlink(target / "a" / "1.png", target / "a" / "alias.png")
    raw = bw.data.FolderRaw(target)
    assert len(raw) == 8 and np.bincount(raw.targets).tolist() == [4, 4]


def test_a_test_image_that_is_a_target_image_is_refused(target, tmp_path):
    _images(tmp_path / "test" / "a", 2, 10)
    _images(tmp_path / "test" / "b", 1, 200)
    os.symlink(target / "b" / "3.png", tmp_path / "test" / "b" / "leak.png")
    with pytest.raises(DataError, match=r"in both the 'target' and the 'test' folders"):
        bw.data.image_folders(target, target, test_root=tmp_path / "test",
                              mean=(0.5,) * 3, std=(0.2,) * 3)
    with pytest.raises(DataError, match=r"leak\.png.*'train' and the 'test' folders"):
        bw.data.labelled_folder_splits(target, tmp_path / "test", image_size=8)


def test_a_broken_link_is_refused(target):
    os.symlink(target / "a" / "gone.png", target / "a" / "dangling.png")
    with pytest.raises(DataError, match=r"dangling\.png is a broken symbolic link"):
        bw.data.FolderRaw(target)


def test_the_order_is_torchvisions(target):
    from torchvision.datasets.folder import make_dataset

    _images(target / "a" / "sub", 2)
    _images(target / "a" / "sub-x", 2)
    expected = [p for p, _ in make_dataset(str(target), {"a": 0, "b": 1}, IMAGE_EXTENSIONS)]
    assert [str(p) for p in bw.data.FolderRaw(target).files] == expected
