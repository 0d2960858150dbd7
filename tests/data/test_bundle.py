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


def test_transformed_view_keeps_labels_without_decoding_and_fingerprints():
    import numpy as np
    import torch

    from betaweighter.data import Transformed

    class Raw:
        targets = np.array([3, 1, 2])

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.full((1,), float(i)), int(self.targets[i])

        def fingerprint(self):
            return "raw"

    view = Transformed(Raw(), lambda x: x * 10, [2, 0])
    assert view.targets.tolist() == [2, 3] and len(view) == 2
    assert view[0][0].item() == 20.0 and view[0][1] == 2
    assert view.fingerprint() != Transformed(Raw(), None, [2, 0]).fingerprint()
