"""STL-10 through the real loader, from tiny files in the official binary layout."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
import torchvision
from ondisk import STL_COUNTS  # what write_stl10 writes

import betaweighter as bw
from betaweighter.data.sources import stl10 as stl10_module
from betaweighter.data.sources.stl10 import STL10Raw, stl10
from betaweighter.errors import CorruptDatasetError, DatasetNotFoundError

pytestmark = pytest.mark.filterwarnings("ignore:.*the official STL-10")



def test_raw_images_are_upright_and_labels_zero_based(stl10_root):
    root, written = stl10_root
    train = STL10Raw(root, "train")
    assert len(train) == STL_COUNTS["train"]
    image, label = train[7]
    assert image.dtype == torch.uint8 and image.shape == (3, 96, 96)
    assert np.array_equal(image.numpy(), written["train"][7])
    assert (image[:, :8, 20:] == 250).all() and (image[:, 20:, :8] == 5).all()
    assert label == written["train_labels"][7] == 7
    assert np.array_equal(train.targets, written["train_labels"])
    unlabeled = STL10Raw(root / "stl10_binary", "unlabeled")  # the folder itself works too
    assert unlabeled.targets is None and unlabeled[3][1] == -1


def test_matches_torchvision_reader(stl10_root, monkeypatch):
    """Same pixels and labels as torchvision's own STL10 (its md5 check is bypassed, since
    tiny files cannot match the official checksums)."""
    root, _ = stl10_root
    monkeypatch.setattr(torchvision.datasets.STL10, "_check_integrity", lambda self: True)
    ref = torchvision.datasets.STL10(str(root), split="test")
    ours = STL10Raw(root, "test")
    for i in (0, 5, 19):
        assert np.array_equal(ours[i][0].numpy(), ref.data[i])
        assert ours[i][1] == int(ref.labels[i])


def test_bundle_parts_and_transforms(stl10_root):
    root, _ = stl10_root
    b = stl10(root, val_train_per_class=4, val_test_per_class=2)
    assert (len(b.pool), len(b.target_train), len(b.target_val), len(b.test)) == (30, 40, 20, 20)
    assert b.num_classes == 10 and b.image_size == 84
    x, idx = b.pool[3]
    assert x.shape == (3, 84, 84) and x.dtype == torch.float32 and idx == 3
    assert np.bincount(bw.data.labels_of(b.target_train)).tolist() == [4] * 10
    assert np.bincount(bw.data.labels_of(b.target_val)).tolist() == [2] * 10
    assert not set(b.splits["val_train"]) & set(b.splits["val_test"])
    # Evaluation: centre crop, no flip, identical every time.
    x1, y1 = b.test[4]
    x2, _ = b.test[4]
    assert torch.equal(x1, x2) and y1 == 4
    raw = STL10Raw(root, "test")[4][0].float() / 255
    mean, std = torch.tensor(b.mean)[:, None, None], torch.tensor(b.std)[:, None, None]
    assert torch.allclose(x1, (raw[:, 6:90, 6:90] - mean) / std, atol=1e-5)
    # Training: random crops differ between calls.
    torch.manual_seed(0)
    assert not all(torch.equal(b.pool[0][0], b.pool[0][0]) for _ in range(3))


def test_statistics_measured_and_overridable(stl10_root):
    root, written = stl10_root
    b = stl10(root, val_train_per_class=3, val_test_per_class=3)
    direct = written["unlabeled"].astype(np.float64) / 255
    assert np.allclose(b.mean, direct.mean(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(b.std, direct.std(axis=(0, 2, 3)), atol=1e-6)
    paper = stl10(root, val_train_per_class=3, val_test_per_class=3,
                  mean=stl10_module.PAPER_MEAN, std=stl10_module.PAPER_STD)
    assert paper.mean == stl10_module.PAPER_MEAN


def test_splits_seeded_saved_and_reloaded(stl10_root, tmp_path):
    root, _ = stl10_root
    a = stl10(root, val_train_per_class=3, val_test_per_class=3, seed=1)
    again = stl10(root, val_train_per_class=3, val_test_per_class=3, seed=1)
    other = stl10(root, val_train_per_class=3, val_test_per_class=3, seed=2)
    assert np.array_equal(a.splits["val_train"], again.splits["val_train"])
    assert not np.array_equal(a.splits["val_train"], other.splits["val_train"])
    path = a.save_splits(tmp_path / "run" / "splits.json")
    reloaded = stl10(root, splits=path, seed=2)  # the file wins over seed and sizes
    for name in ("val_train", "val_test"):
        assert np.array_equal(reloaded.splits[name], a.splits[name])
    assert torch.equal(reloaded.target_train[0][0], a.target_train[0][0])
    with pytest.raises(ValueError, match="outside"):
        stl10(root, splits={"val_train": [0, 1], "val_test": [2, 999]})
    with pytest.raises(ValueError, match="overlaps"):
        stl10(root, splits={"val_train": [0, 1], "val_test": [1, 2]})


def test_too_many_per_class_is_a_clear_error(stl10_root):
    with pytest.raises(ValueError, match="class 0 has 6 items"):
        stl10(stl10_root[0], val_train_per_class=5, val_test_per_class=5)


def test_missing_data_names_path_and_download(tmp_path, monkeypatch):
    monkeypatch.setattr(stl10_module, "download_stl10",
                        lambda root: pytest.fail("downloaded without being asked"))
    with pytest.raises(DatasetNotFoundError) as err:
        stl10(tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "stl10_binary" / "unlabeled_X.bin") in message
    assert "download=True" in message and "--download" in message


def test_download_only_when_asked(tmp_path, monkeypatch, stl10_writer):
    calls = []

    def fake_download(root):
        calls.append(root)
        stl10_writer(tmp_path)

    monkeypatch.setattr(stl10_module, "download_stl10", fake_download)
    b = stl10(tmp_path, download=True, val_train_per_class=1, val_test_per_class=1)
    assert calls == [tmp_path] and len(b.pool) == STL_COUNTS["unlabeled"]
    stl10(tmp_path, download=True, val_train_per_class=1, val_test_per_class=1)
    assert len(calls) == 1  # files present: nothing fetched again


def test_truncated_and_corrupt_files(stl10_root, tmp_path):
    src, _ = stl10_root
    root = tmp_path / "copy"
    shutil.copytree(src, root)
    folder = root / "stl10_binary"
    data = (folder / "unlabeled_X.bin").read_bytes()
    (folder / "unlabeled_X.bin").write_bytes(data[: len(data) - 100])
    with pytest.raises(CorruptDatasetError, match="unlabeled_X.bin.*truncated"):
        STL10Raw(root, "unlabeled")
    (folder / "train_y.bin").write_bytes((folder / "train_y.bin").read_bytes()[:-1])
    with pytest.raises(CorruptDatasetError, match="59 labels for 60 images"):
        STL10Raw(root, "train")
    np.zeros(STL_COUNTS["test"], np.uint8).tofile(folder / "test_y.bin")  # 0 is not 1-based
    with pytest.raises(CorruptDatasetError, match="labels must lie in 1..10"):
        STL10Raw(root, "test")
    (folder / "test_y.bin").unlink()
    with pytest.raises(DatasetNotFoundError, match="test_y.bin"):
        STL10Raw(root, "test")


def test_partial_copy_warns(stl10_root):
    with pytest.warns(UserWarning, match="official STL-10 train split has 5000"):
        STL10Raw(stl10_root[0], "train")


def test_pool_pickles_small_and_loads_in_workers(stl10_root):
    root, written = stl10_root
    raw = STL10Raw(root, "unlabeled")
    raw[0]  # opens the memory map
    assert len(pickle.dumps(raw)) < 10_000  # workers re-map the file, nothing is copied
    b = stl10(root, val_train_per_class=1, val_test_per_class=1)
    loader = torch.utils.data.DataLoader(b.pool, batch_size=8, num_workers=2)
    seen = torch.cat([idx for _, idx in loader])
    assert sorted(seen.tolist()) == list(range(STL_COUNTS["unlabeled"]))
