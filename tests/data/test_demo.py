"""The embedded demo set: scikit-learn digits plus photo patches, no download."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import betaweighter as bw
from betaweighter.data.sources import demo as demo_module


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return bw.data.demo(tmp_path_factory.mktemp("demo"))


def test_parts_and_shapes(bundle):
    assert bundle.name == "demo" and bundle.num_classes == 10 and bundle.image_size == 32
    n_digits = len(load_digits().target)
    parts = [len(bundle.target_train), len(bundle.target_val), len(bundle.test)]
    assert sum(parts) + bundle.in_domain.sum() == n_digits
    assert min(parts) >= 290 and bundle.in_domain.sum() == len(bundle.splits["digits_pool"])
    assert len(bundle.pool) == 2 * bundle.in_domain.sum()  # one distractor per digit
    x, i = bundle.pool[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and i == 5
    for part in (bundle.target_train, bundle.target_val, bundle.test):
        counts = np.bincount(bw.data.labels_of(part), minlength=10)
        assert counts.min() >= 25  # room for 10-shot 10-query episodes
    flat = torch.stack([bundle.pool[k][0] for k in range(len(bundle.pool))])
    assert flat.mean((0, 2, 3)).abs().max() < 1e-4  # normalised by the pool's statistics
    assert torch.allclose(flat.std((0, 2, 3)), torch.ones(3), atol=1e-3)


def test_in_domain_marks_the_digits(bundle):
    raw = np.load(bundle.info["cache_file"])
    pool = raw["pool"].astype(np.int16)
    grey = (pool[:, 0] == pool[:, 1]).all((1, 2)) & (pool[:, 1] == pool[:, 2]).all((1, 2))
    assert np.array_equal(grey, bundle.in_domain)  # digits are grey, photo patches are not
    assert 0 < bundle.in_domain[:100].mean() < 1  # the two kinds are shuffled together


def test_target_labels_are_the_digit_labels(bundle):
    digits = load_digits()
    idx = bundle.splits["test"]
    assert np.array_equal(bw.data.labels_of(bundle.test), digits.target[idx])
    # Same digit, same pixels, whatever the split: the upsampled 8x8 image.
    x = bundle.test[0][0] * torch.tensor(bundle.std)[:, None, None]
    x = x + torch.tensor(bundle.mean)[:, None, None]
    small = torch.nn.functional.avg_pool2d(x[:1][None], 4)[0, 0]
    assert np.corrcoef(small.flatten(), digits.images[idx[0]].flatten())[0, 1] > 0.9


def test_cached_and_fast(tmp_path, monkeypatch):
    start = time.perf_counter()
    first = bw.data.demo(tmp_path)
    assert time.perf_counter() - start < 10
    monkeypatch.setattr(demo_module, "build_demo_arrays", lambda *a: pytest.fail("rebuilt"))
    again = bw.data.demo(tmp_path)
    assert torch.equal(again.pool[7][0], first.pool[7][0])
    assert np.array_equal(again.in_domain, first.in_domain)


@pytest.fixture()
def quick_build(bundle, monkeypatch):
    """Skip the (second-long) build where only the caching logic is under test."""
    with np.load(bundle.info["cache_file"]) as data:
        arrays = {k: data[k] for k in data.files}
    monkeypatch.setattr(demo_module, "build_demo_arrays", lambda *a: arrays)


def test_cache_dir_from_environment(tmp_path, monkeypatch, quick_build):
    monkeypatch.setenv("BETAWEIGHTER_CACHE", str(tmp_path / "env-cache"))
    b = bw.data.demo()
    assert b.info["cache_file"].startswith(str(tmp_path / "env-cache"))


def test_corrupt_cache_is_rebuilt(tmp_path, quick_build, caplog):
    b = bw.data.demo(tmp_path)
    with open(b.info["cache_file"], "wb") as f:
        f.write(b"not an npz")
    with caplog.at_level("WARNING", logger="betaweighter"):
        again = bw.data.demo(tmp_path)
    assert "rebuilding" in caplog.text
    assert torch.equal(again.pool[0][0], b.pool[0][0])


def test_seed_and_options_change_the_set(bundle, tmp_path):
    a = bundle
    b = bw.data.demo(tmp_path, seed=1, distractor_ratio=0.5)
    assert not np.array_equal(a.splits["val_train"], b.splits["val_train"])
    assert len(b.pool) - b.in_domain.sum() == round(0.5 * b.in_domain.sum())
