"""Decoding image files: bit depth, decompression bombs, and broken labelled images caught
when the splits are built."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import betaweighter as bw
from betaweighter.data.images import check_image, read_image
from betaweighter.errors import CorruptDatasetError, DataError


def test_a_16_bit_png_is_scaled_by_its_depth_not_clipped(tmp_path):
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")  # what Pillow makes of it
    x = read_image(tmp_path / "deep.png")
    assert x.dtype == torch.uint8
    assert x.shape == (3, 8, 8) and (x == 117).all()  # 30000 / 257 = 116.7, not 255
    ramp = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)  # 0, 257, ..., 65535
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert read_image(tmp_path / "ramp.png")[0].flatten().tolist() == list(range(256))


def test_8_bit_images_are_unchanged(tmp_path):
    Image.new("L", (4, 4), 200).save(tmp_path / "grey.png")
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "rgb.png")
    assert (read_image(tmp_path / "grey.png") == 200).all()
    assert read_image(tmp_path / "rgb.png")[:, 0, 0].tolist() == [1, 2, 3]


def test_a_decompression_bomb_is_one_error_saying_how_to_raise_the_limit(tmp_path,
                                                                         monkeypatch):
    Image.new("RGB", (30, 30)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 900 pixels: over twice the limit
    for fn in (read_image, check_image):
        with pytest.raises(DataError, match=r"big\.png: .*decompression-bomb limit of 100 "
                                            r"pixels.*PIL\.Image\.MAX_IMAGE_PIXELS"):
            fn(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # between the limit and twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's warning, raised as an error
        with pytest.raises(DataError, match=r"big\.png"):
            read_image(tmp_path / "big.png")


def _target(root: Path) -> Path:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (10, 10), (40 * i, 90, 200 * (c == "b"))).save(root / c / f"{i}.png")
            Image.new("RGB", (10, 10), (40 * i, 90, 9)).save(root / c / f"{i}.jpg")
    return root


@pytest.mark.parametrize("damage", ["empty", "truncated_png", "truncated_jpg", "text"])
def test_a_broken_labelled_image_is_caught_when_the_splits_are_built(tmp_path, damage):
    target = _target(tmp_path / "target")
    name = {"empty": "a/1.png", "truncated_png": "b/2.png", "truncated_jpg": "b/3.jpg",
            "text": "a/0.jpg"}[damage]
    bad = target / name
    data = bad.read_bytes()
    bad.write_bytes({"empty": b"", "text": b"not an image\n"}.get(damage,
                                                                   data[: len(data) // 2]))
    with pytest.raises(CorruptDatasetError, match=rf"{name}: "):
        bw.data.image_folders(target, target, mean=(0.5,) * 3, std=(0.2,) * 3)
    with pytest.raises(CorruptDatasetError, match=rf"{name}: "):
        bw.data.FolderRaw(target)  # what labelled_folder_splits and the evaluators read
    assert len(bw.data.FolderRaw(target, check=False)) == 16  # found, unchecked


def test_good_labelled_images_pass_the_check(tmp_path):
    target = _target(tmp_path / "target")
    for path in sorted(target.rglob("*.*")):
        check_image(path)
    raw = bw.data.FolderRaw(target)
    assert len(raw) == 16 and raw[0][0].shape == (3, 10, 10)
