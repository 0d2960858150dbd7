"""The paper's transfer datasets through torchvision's classes: official splits, labels,
pixels, held-out validation, the few-shot pool, and one-line errors, on tiny copies in the
published layouts (DTD, CIFAR-10)."""

import numpy as np
import pytest
import torch
from ondisk_transfer import CIFAR_NAMES, DTD_CLASSES, write_cifar10, write_dtd
from PIL import Image

from betaweighter.data.labelled import pooled_transfer, transfer_splits
from betaweighter.data.transfer_sets import transfer_raws
from betaweighter.errors import CorruptDatasetError, DataError, DatasetNotFoundError


def test_dtd_partition_one_as_written(tmp_path):
    written = write_dtd(tmp_path)
    raws, classes = transfer_raws("DTD", tmp_path)
    assert classes == sorted(DTD_CLASSES) and sorted(raws) == ["test", "train", "val"]
    for split, rows in written.items():
        raw = raws[split]
        assert len(raw) == len(rows) and raw.targets.tolist() == [label for _, label in rows]
        by_file = {str(f).split("images/")[1]: k for k, f in enumerate(raw.dataset._image_files)}
        for file, label in rows[::3]:
            image, got = raw[by_file[file]]
            decoded = np.array(Image.open(tmp_path / "dtd/dtd/images" / file).convert("RGB"))
            assert got == label and image.dtype == torch.uint8
            assert torch.equal(image, torch.from_numpy(decoded).permute(2, 0, 1))
    prints = {s: r.fingerprint() for s, r in raws.items()}
    assert len(set(prints.values())) == 3 and transfer_raws("DTD", tmp_path)[0][
        "train"].fingerprint() == prints["train"]


def test_cifar10_batches_as_written(tmp_path):
    written = write_cifar10(tmp_path, train=40, test=20)
    raws, classes = transfer_raws("CIFAR10", tmp_path)
    assert classes == list(CIFAR_NAMES) and sorted(raws) == ["test", "train"]
    for split, (images, labels) in written.items():
        assert raws[split].targets.tolist() == labels.tolist()
        for k in (0, 7, len(labels) - 1):
            image, label = raws[split][k]
            assert label == labels[k]
            assert torch.equal(image, torch.from_numpy(images[k]).permute(2, 0, 1))


def test_splits_hold_out_val_only_where_there_is_no_official_one(tmp_path):
    write_cifar10(tmp_path / "c", train=50, test=20)
    s = transfer_splits("CIFAR10", tmp_path / "c", val_fraction=0.2, seed=3, image_size=16)
    train, val = s["train"].indices, s["val"].indices
    assert s["report"]["val_from_train"] and s["report"]["dataset"] == "CIFAR10"
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 50
    assert np.bincount(s["val"].targets, minlength=10).tolist() == [1] * 10  # 20 % per class
    assert s["test"][0][0].shape == (3, 16, 16) and len(s["trainval_augmented"]) == 50
    write_dtd(tmp_path / "d")
    d = transfer_splits("DTD", tmp_path / "d", image_size=16)
    assert not d["report"]["val_from_train"]
    assert [d["report"][f"{k}_images"] for k in ("train", "val", "test")] == [12, 6, 9]


def test_fewshot_pool_is_the_union_of_the_splits(tmp_path):
    write_dtd(tmp_path)
    pool, classes = pooled_transfer("DTD", tmp_path, ["train", "val", "test"], image_size=16)
    assert len(pool) == 27 and classes == sorted(DTD_CLASSES)
    assert np.bincount(pool.targets).tolist() == [9, 9, 9]
    only, _ = pooled_transfer("DTD", tmp_path, ["test", "test"], image_size=16)
    assert len(only) == 9
    write_cifar10(tmp_path, train=20, test=10)
    with pytest.raises(DataError, match="CIFAR10 has none of the splits"):
        pooled_transfer("CIFAR10", tmp_path, ["val"])


def test_missing_or_broken_data_is_one_line_naming_the_path(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        transfer_raws("DTD", tmp_path / "nowhere")
    message = str(e.value)
    assert "\n" not in message and str(tmp_path / "nowhere" / "dtd" / "dtd") in message
    assert "Nothing is downloaded" in message
    assert not (tmp_path / "nowhere").exists()
    write_cifar10(tmp_path, train=20, test=10)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        transfer_raws("CIFAR10", tmp_path)
    write_cifar10(tmp_path, train=20, test=10)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(CorruptDatasetError, match="cannot be read as CIFAR10"):
        transfer_raws("CIFAR10", tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'VOC2007'"):
        transfer_raws("VOC2007", tmp_path)
