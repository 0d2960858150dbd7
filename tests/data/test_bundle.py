"""DataBundle and Indexed, the two shapes the rest of the library relies on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import betaweighter as bw


def _bundle(in_domain=None) -> bw.data.DataBundle:
    x = torch.zeros(6, 3, 4, 4)
    target = bw.data.TensorImages(x, [0, 1, 0, 1, 0, 1])
    return bw.data.DataBundle("toy", bw.data.Indexed(bw.data.TensorImages(x)), target, target,
                              target, 2, 4, (0.0,) * 3, (1.0,) * 3, in_domain=in_domain,
                              splits={"val_train": np.arange(3)}, info={"seed": 0, "x": object()})


def test_indexed_wraps_any_dataset():
    pool = bw.data.Indexed(torch.utils.data.TensorDataset(torch.arange(5.0), torch.arange(5)))
    assert pool[3] == (torch.tensor(3.0), 3)


def test_summary_and_saved_splits(tmp_path):
    b = _bundle(in_domain=[True, False] * 3)
    assert "pool 6" in b.summary() and "3 in-domain" in b.summary()
    splits, meta = bw.data.load_splits(b.save_splits(tmp_path / "s.json"))
    assert meta == {"dataset": "toy", "seed": 0} and splits["val_train"].tolist() == [0, 1, 2]


def test_in_domain_must_fit_the_pool():
    with pytest.raises(ValueError, match="2 entries for a pool of 6"):
        _bundle(in_domain=[True, False])
