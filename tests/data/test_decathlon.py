"""Visual Decathlon through the real loader: COCO-style JSON plus JPEGs on disk."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import betaweighter as bw
from betaweighter.data.sources import decathlon as vd
from betaweighter.errors import CorruptDatasetError, DatasetNotFoundError

TRAIN, VAL, TEST, CLASSES = 12, 6, 3, 3  # per domain, as written by conftest.write_decathlon


def test_raw_split_labels_follow_category_ids(decathlon_root):
    raw = vd.DecathlonRaw(decathlon_root, "dtd", "train")
    assert len(raw) == TRAIN and raw.num_classes == CLASSES
    assert raw.classes == ["dtd-class0", "dtd-class1", "dtd-class2"]
    assert raw.targets.tolist() == [i % CLASSES for i in range(TRAIN)]
    image, label = raw[4]
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and label == 1
    test = vd.DecathlonRaw(decathlon_root / "decathlon-1.0", "dtd", "test")
    assert (test.targets == -1).all() and len(test) == TEST


def test_bundle_pool_is_other_domains_plus_target_unlabelled(decathlon_root):
    b = vd.decathlon(decathlon_root, "svhn")
    others = len(bw.data.DECATHLON_DOMAINS) - 1
    assert len(b.pool) == others * (TRAIN + VAL) + TEST
    assert b.in_domain.sum() == TEST  # the target's test images, labels private
    assert (len(b.target_train), len(b.target_val), len(b.test)) == (6, 6, VAL)
    assert b.num_classes == CLASSES and b.image_size == 64 and b.name == "decathlon/svhn"
    assert np.bincount(bw.data.labels_of(b.target_train)).tolist() == [2, 2, 2]
    x, idx = b.pool[len(b.pool) - 1]
    assert x.shape == (3, 64, 64) and idx == len(b.pool) - 1 and b.in_domain[idx]
    # The official val split is the test set, with labels.
    assert bw.data.labels_of(b.test).tolist() == [i % CLASSES for i in range(VAL)]


def test_labelled_fraction_moves_the_rest_into_the_pool(decathlon_root):
    b = vd.decathlon(decathlon_root, "dtd", pool_domains=["gtsrb"], labelled_fraction=0.5)
    assert len(b.target_train) + len(b.target_val) == TRAIN // 2
    assert len(b.splits["target_unlabelled"]) == TRAIN // 2
    assert len(b.pool) == (TRAIN + VAL) + TRAIN // 2 + TEST
    assert b.in_domain.sum() == TRAIN // 2 + TEST
    parts = [set(b.splits[k].tolist()) for k in ("val_train", "val_test", "target_unlabelled")]
    assert set.union(*parts) == set(range(TRAIN)) and sum(map(len, parts)) == TRAIN
    alone = vd.decathlon(decathlon_root, "dtd", pool_domains=["gtsrb"], target_unlabelled=False,
                         pool_splits=("train", "val", "test"))
    assert len(alone.pool) == TRAIN + VAL + TEST and not alone.in_domain.any()


def test_per_domain_statistics_from_the_data(decathlon_root, vd_colour):
    b = vd.decathlon(decathlon_root, "aircraft", pool_domains=["omniglot"])
    stats = b.info["domain_stats"]
    for domain in ("aircraft", "omniglot"):
        assert np.allclose(np.array(stats[domain]["mean"]) * 255, vd_colour(domain), atol=3)
    assert b.mean == tuple(stats["aircraft"]["mean"])
    # Every pool image is normalised by its own domain: centred near zero.
    pool_means = torch.stack([b.pool[i][0].mean((1, 2)) for i in range(4)])
    assert pool_means.abs().max() < 0.35


def test_statistics_are_cached(decathlon_root, monkeypatch):
    vd.decathlon(decathlon_root, "ucf101", pool_domains=["cifar100"])
    monkeypatch.setattr(vd, "channel_stats", lambda *a, **k: pytest.fail("recomputed"))
    vd.decathlon(decathlon_root, "ucf101", pool_domains=["cifar100"])


def test_splits_reload_exactly(decathlon_root, tmp_path):
    a = vd.decathlon(decathlon_root, "dtd", pool_domains=["svhn"], labelled_fraction=0.5,
                     seed=3)
    path = a.save_splits(tmp_path / "splits.json")
    b = vd.decathlon(decathlon_root, "dtd", pool_domains=["svhn"], splits=path)
    for name, idx in a.splits.items():
        assert np.array_equal(b.splits[name], idx)
    assert np.array_equal(a.in_domain, b.in_domain)


def test_bad_arguments(decathlon_root):
    with pytest.raises(ValueError, match="unknown target domain"):
        vd.decathlon(decathlon_root, "mnist")
    with pytest.raises(ValueError, match="must not contain the target"):
        vd.decathlon(decathlon_root, "dtd", pool_domains=["dtd"])


def test_missing_data_names_the_file(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        vd.decathlon(tmp_path, "dtd")
    message = str(err.value)
    assert str(tmp_path / "decathlon-1.0" / "annotations" / "dtd_train.json") in message
    assert "robots.ox.ac.uk/~vgg/decathlon" in message


def test_stripped_test_file_name_is_accepted(decathlon_root, tmp_path):
    root = tmp_path / "vd"
    shutil.copytree(decathlon_root / "decathlon-1.0" / "annotations",
                    root / "decathlon-1.0" / "annotations")
    (root / "decathlon-1.0" / "data").symlink_to(decathlon_root / "decathlon-1.0" / "data")
    ann = root / "decathlon-1.0" / "annotations"
    (ann / "dtd_test.json").rename(ann / "dtd_test_stripped.json")
    assert len(vd.DecathlonRaw(root, "dtd", "test")) == TEST


def test_corrupt_files_fail_clearly(decathlon_root, tmp_path):
    root = tmp_path / "vd"
    shutil.copytree(decathlon_root / "decathlon-1.0", root / "decathlon-1.0",
                    ignore=lambda folder, names: [  # copy the dtd domain only
                        n for n in names if n.endswith(".json") and not n.startswith("dtd_")
                        or folder.endswith("data") and n != "dtd"])
    ann = root / "decathlon-1.0" / "annotations"
    jpeg = root / "decathlon-1.0" / "data" / "dtd" / "train" / "00002.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:200])
    raw = vd.DecathlonRaw(root, "dtd", "train")
    raw[1]
    with pytest.raises(CorruptDatasetError, match="00002.jpg.*cannot decode"):
        raw[2]
    (ann / "dtd_val.json").write_text('{"images": [')
    with pytest.raises(CorruptDatasetError, match="dtd_val.json.*not valid JSON"):
        vd.DecathlonRaw(root, "dtd", "val")
    doc = json.loads((ann / "dtd_train.json").read_text())
    doc["annotations"][0]["category_id"] = 999
    (ann / "dtd_train.json").write_text(json.dumps(doc))
    with pytest.raises(CorruptDatasetError, match="unknown id"):
        vd.DecathlonRaw(root, "dtd", "train")
    shutil.rmtree(root / "decathlon-1.0" / "data" / "dtd" / "test")
    with pytest.raises(DatasetNotFoundError, match="00000.jpg"):
        vd.DecathlonRaw(root, "dtd", "test")
