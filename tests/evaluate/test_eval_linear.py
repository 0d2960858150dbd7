"""The linear probe: C selection on validation, exact test metrics, calibration."""

import numpy as np
import pytest
import torch

from betaweighter.data.labelled import labelled_folder_splits
from betaweighter.evaluate.linear import (
    default_c_grid,
    fit_linear_probe,
    linear_probe,
    select_c,
)
from betaweighter.models import build_model


def _blobs(rng, n_per_class, centres, noise=0.3):
    x = np.concatenate([c + noise * rng.normal(size=(n_per_class, len(c))) for c in centres])
    return x, np.repeat(np.arange(len(centres)), n_per_class)


def test_separable_features_give_full_accuracy():
    rng = np.random.default_rng(0)
    centres = 3 * rng.normal(size=(4, 16))
    r = fit_linear_probe(_blobs(rng, 30, centres), _blobs(rng, 10, centres),
                         _blobs(rng, 25, centres), c_values=[1e-4, 1e-2, 1.0, 100.0])
    assert r["top1"] == 1.0 and r["mean_per_class_accuracy"] == 1.0
    assert r["n_test"] == 100 and r["num_classes"] == 4
    assert [v["C"] for v in r["val_scores"]] == [1e-4, 1e-2, 1.0, 100.0]
    assert 0.0 <= r["calibration"]["ece"] <= 1.0 and r["calibration"]["temperature"] > 0


def test_c_is_chosen_on_validation_first_best_on_ties():
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [4.0, 0.0]])
    x0, _ = _blobs(rng, 90, centres[:1])
    x1, _ = _blobs(rng, 10, centres[1:])
    train = (np.r_[x0, x1], np.r_[np.zeros(90, int), np.ones(10, int)])
    val, test = _blobs(rng, 20, centres), _blobs(rng, 20, centres)
    # C = 1e-6 shrinks the weights to ~0: the intercept predicts the majority class
    r = fit_linear_probe(train, val, test, c_values=[1e-6, 1.0, 100.0],
                         metric="mean_per_class")
    scores = [v["score"] for v in r["val_scores"]]
    assert scores[0] == pytest.approx(0.5) and scores[1] == scores[2] == 1.0
    assert r["C"] == 1.0 and r["val_score"] == 1.0 and r["top1"] == 1.0


def test_default_grid_is_the_papers_45_values():
    grid = default_c_grid()
    assert grid.size == 45 and grid[0] == pytest.approx(1e6) and grid[-1] == pytest.approx(1e-5)
    assert np.all(np.diff(grid) < 0)


def test_noise_features_give_chance_accuracy():
    rng = np.random.default_rng(1)
    split = lambda n: (rng.normal(size=(n, 8)), rng.integers(0, 2, n))  # noqa: E731
    r = fit_linear_probe(split(200), split(100), split(400), c_values=[0.01, 1.0])
    assert 0.35 < r["top1"] < 0.65


def test_classes_without_training_images_are_an_error():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3))
    train = (x[:6], np.array([0, 0, 0, 1, 1, 1]))
    test = (x[6:], np.array([0, 1, 2, 2, 1, 0]))
    with pytest.raises(ValueError, match=r"classes \[2\] appear in the test split"):
        fit_linear_probe(train, train, test, c_values=[1.0])


def test_non_finite_features_are_an_error():
    x = np.ones((4, 2))
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_linear_probe((x, np.array([0, 1, 0, 1])), (x, np.array([0, 1, 0, 1])),
                         (x, np.array([0, 1, 0, 1])))


def test_probe_on_a_backbone_and_image_folders(colour_folders, tiny_convnet_config, tmp_path):
    torch.manual_seed(0)
    model = build_model(**tiny_convnet_config)
    s = labelled_folder_splits(colour_folders["train"], colour_folders["test"], None,
                            image_size=16)
    assert s["report"]["val_from_train"] and s["report"]["val_images"] == 6
    r = linear_probe(model, s["train"], s["val"], s["test"], batch_size=7,
                     cache_dir=tmp_path / "cache", c_values=[0.1, 10.0, 1000.0])
    assert r["n_train"] == 18 and r["n_test"] == 15 and r["feature_dim"] == 8
    assert r["top1"] >= 0.8  # flat colours are easy even for random conv features
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 6  # 3 splits x (features, labels)


def test_select_c_fits_train_and_scores_val_only():
    rng = np.random.default_rng(3)
    centres = 3 * rng.normal(size=(3, 8))
    train, val = _blobs(rng, 20, centres), _blobs(rng, 10, centres)
    grid = [1e-6, 1e-3, 1.0]
    out = select_c(train, val, c_values=grid)
    full = fit_linear_probe(train, val, val, c_values=grid)  # the same selection, then more
    assert out["C"] == full["C"] and out["val_score"] == full["val_score"]
    assert out["val_scores"] == full["val_scores"]
    assert set(out) == {"C", "val_score", "val_scores", "not_converged"}  # no test, no refit
