"""Few-shot episodes: seeded and serialisable; nearest class mean and logistic regression."""

import numpy as np
import pytest
import torch

from betaweighter.data.labelled import pooled_folders
from betaweighter.evaluate.fewshot import (
    Episodes,
    evaluate_fewshot,
    fit_fewshot,
    make_episodes,
    nearest_class_mean,
)
from betaweighter.models import build_model


def _labels():
    return np.repeat(np.arange(8), 25)


def test_episodes_are_identical_under_a_seed_and_differ_across_seeds():
    a = make_episodes(_labels(), way=5, shot=2, query=3, episodes=20, seed=7)
    b = make_episodes(_labels(), way=5, shot=2, query=3, episodes=20, seed=7)
    c = make_episodes(_labels(), way=5, shot=2, query=3, episodes=20, seed=8)
    assert a == b and a != c
    assert len(a) == 20 and all(len(s) == 10 and len(q) == 15
                                for s, q in zip(a.support, a.queries))
    labels = _labels()
    for s, q, cls in zip(a.support, a.queries, a.classes):
        assert len(set(s) | set(q)) == 25  # support and query never share an item
        np.testing.assert_array_equal(labels[s], np.repeat(cls, 2))  # class-major
        np.testing.assert_array_equal(labels[q], np.repeat(cls, 3))


def test_episodes_round_trip_through_json_and_refuse_other_datasets(tmp_path):
    a = make_episodes(_labels(), way=3, shot=1, query=2, episodes=5, seed=0)
    b = Episodes.load(a.save(tmp_path / "ep.json"))
    assert a == b
    b.check(_labels())
    with pytest.raises(ValueError, match="another dataset"):
        b.check(np.repeat(np.arange(8), 25)[::-1])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read an episode list"):
        Episodes.load(tmp_path / "bad.json")


def test_nearest_class_mean_on_separated_clusters_is_perfect():
    rng = np.random.default_rng(0)
    labels = _labels()
    centres = 10 * rng.normal(size=(8, 6))
    feats = centres[labels] + rng.normal(size=(labels.size, 6))
    ep = make_episodes(labels, way=5, shot=5, query=15, episodes=30, seed=0)
    for classifier in ("ncm", "logistic"):
        r = fit_fewshot(feats, labels, ep, classifier=classifier)
        assert r["accuracy"] == 1.0 and r["ci95"] == 0.0 and r["episodes"] == 30


def test_random_features_are_near_chance_with_a_sensible_interval():
    rng = np.random.default_rng(1)
    labels = _labels()
    ep = make_episodes(labels, way=5, shot=5, query=15, episodes=200, seed=0)
    r = fit_fewshot(rng.normal(size=(labels.size, 6)), labels, ep)
    assert abs(r["accuracy"] - 0.2) < 3 * r["ci95"] + 0.02
    accs = np.asarray(r["episode_accuracies"])
    assert r["ci95"] == pytest.approx(1.96 * accs.std(ddof=1) / np.sqrt(200))


def test_nearest_class_mean_uses_squared_euclidean_distance():
    support = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 2.0]])
    pred = nearest_class_mean(support, np.array([3, 3, 7, 7]),
                              np.array([[1.0, 5.0], [6.5, 0.0], [5.0, 1.0]]))
    np.testing.assert_array_equal(pred, [3, 7, 3])


def test_too_few_items_per_class_is_a_clear_error():
    with pytest.raises(ValueError, match="needs 5 classes"):
        make_episodes(np.repeat(np.arange(6), 10), way=5, shot=5, query=15, episodes=1)


def test_fewshot_on_a_backbone(image_folder_writer, tiny_convnet_config, tmp_path):
    roots = [image_folder_writer(tmp_path / s, {"red": 4, "green": 4, "blue": 4}, seed=i)
             for i, s in enumerate(("a", "b"))]
    pool, classes = pooled_folders(roots, image_size=16)
    torch.manual_seed(0)
    r = evaluate_fewshot(build_model(**tiny_convnet_config), pool, way=3, shot=2, query=3,
                         episodes=10, batch_size=5)
    assert classes == ["blue", "green", "red"] and r["episodes"] == 10
    assert r["accuracy"] > 0.8
