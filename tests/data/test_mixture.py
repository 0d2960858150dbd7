"""The mixture experiment: drawn shapes and four distractor kinds, built offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import betaweighter as bw
from betaweighter.data.sources.mixture import DISTRACTORS, SHAPES


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return bw.data.mixture(tmp_path_factory.mktemp("cache"), shapes_per_class=12, seed=3)


def test_parts_sizes_and_kinds(bundle):
    kinds = np.asarray(bundle.info["kinds"])
    pooled_shapes = int(bundle.in_domain.sum())
    assert pooled_shapes == 8 * 6  # half of each class
    assert len(bundle.pool) == len(kinds) == 2 * pooled_shapes  # one distractor per shape
    assert (kinds == "shapes").sum() == pooled_shapes
    for kind in DISTRACTORS:
        assert (kinds == kind).sum() == pooled_shapes // 4
    assert bundle.num_classes == len(SHAPES) == 8
    labels = np.concatenate([bundle.target_train.targets, bundle.target_val.targets,
                             bundle.test.targets])
    assert np.bincount(labels).tolist() == [6] * 8
    x, i = bundle.pool[5]
    assert x.shape == (3, 32, 32) and i == 5


def test_symmetric_distractors_hide_their_rotation_and_shapes_do_not(bundle):
    kinds = np.asarray(bundle.info["kinds"])
    for kind, invariant in (("symmetric", True), ("shapes", False)):
        for i in np.flatnonzero(kinds == kind)[:6]:
            x = bundle.pool[int(i)][0]
            same = torch.allclose(torch.rot90(x, 1, (-2, -1)), x, atol=1e-5)
            assert same == invariant or kind == "symmetric" and same


def test_seeded_and_cached(tmp_path):
    a = bw.data.mixture(tmp_path, shapes_per_class=8, seed=1)
    files = list(tmp_path.glob("mixture-*.npz"))
    b = bw.data.mixture(tmp_path, shapes_per_class=8, seed=1)
    assert len(files) == 1 and files[0].stat().st_mtime_ns == list(
        tmp_path.glob("mixture-*.npz"))[0].stat().st_mtime_ns
    assert torch.equal(a.pool[7][0], b.pool[7][0])
    c = bw.data.mixture(tmp_path, shapes_per_class=8, seed=2)
    assert not torch.equal(a.pool[7][0], c.pool[7][0])
    with pytest.raises(ValueError, match="shapes_per_class"):
        bw.data.mixture(tmp_path, shapes_per_class=2)
