"""Invariance to real view changes (arXiv:2111.11398, real-world protocol) on multi-view
folders in the COIL-100 / ALOI layout (object/view.png)."""

import numpy as np
import pytest
import torch
from ondisk import write_view_groups

from betaweighter.errors import DataError
from betaweighter.evaluate.view_invariance import measure_view_invariance, read_view_groups
from betaweighter.models import conv_net

INPUT = {"image_size": 24, "mean": [0.5] * 3, "std": [0.25] * 3, "shrinkage": 0.1}


def _net():
    torch.manual_seed(0)
    return conv_net(width=6, blocks=2).double().eval()


def test_identical_views_score_one(tmp_path):
    root = write_view_groups(tmp_path / "same", {"a": 3, "b": 4, "c": 2}, same=True)
    for protocol in ("paper", "v2"):
        table = measure_view_invariance(_net(), root, protocol=protocol, **INPUT)
        assert [r["param"] for r in table.rows] == ["a", "b", "c"]
        assert [r["count"] for r in table.rows] == [3, 4, 2]
        for row in table.rows:
            assert row["similarity"] == pytest.approx(1.0, abs=1e-12)
            assert row["distance"] == pytest.approx(0.0, abs=1e-9)


def test_the_paper_counts_self_pairs(tmp_path):
    root = write_view_groups(tmp_path / "coil", {"a": 4, "b": 6, "c": 5})
    v2 = measure_view_invariance(_net(), root, protocol="v2", **INPUT)
    paper = measure_view_invariance(_net(), root, protocol="paper", **INPUT)
    for r2, rp in zip(v2.rows, paper.rows):
        k = r2["count"]
        # k self pairs of cosine 1 among the k^2 the paper averages
        assert rp["similarity"] == pytest.approx((k + k * (k - 1) * r2["similarity"]) / k**2,
                                                 abs=1e-10)
        assert rp["distance"] == pytest.approx(r2["distance"])
        assert r2["similarity"] < 0.999
    groups = read_view_groups(root)
    assert sorted(groups) == ["a", "b", "c"] and len(groups["b"]) == 6


def test_groups_from_a_mapping_of_tensors():
    g = torch.Generator().manual_seed(0)
    base = (torch.rand(3, 24, 24, generator=g) * 255).to(torch.uint8)
    groups = {"obj": [base, torch.flip(base, dims=[-1])], "other": [base, base]}
    table = measure_view_invariance(_net(), groups, **INPUT)
    assert table.rows[1]["similarity"] == pytest.approx(1.0, abs=1e-12)
    assert np.isfinite(table.rows[0]["similarity"]) and table.rows[0]["similarity"] < 1


def test_single_view_groups_warn_or_fail(tmp_path):
    lonely = write_view_groups(tmp_path / "one", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="every one of the 2 objects has a single view"):
        measure_view_invariance(_net(), lonely, **INPUT)
    mixed = write_view_groups(tmp_path / "mixed", {"a": 1, "b": 3, "c": 2})
    with pytest.warns(UserWarning, match="1 of 3 objects have a single view and are left out"):
        table = measure_view_invariance(_net(), mixed, **INPUT)
    assert [r["param"] for r in table.rows] == ["b", "c"]
