"""Sanity check of the whole method: meta-learned weights find flipped labels.

Half of a supervised pool has wrong labels; the meta objective is classification on clean
target data. Instances whose gradient disagrees with the clean objective's gradient must
end up with lower weights.
"""

from __future__ import annotations

import pytest
from helpers import train_on_label_noise
from sklearn.metrics import roc_auc_score

import betaweighter as bw


@pytest.mark.parametrize("make", [lambda n: bw.BetaWeights(n), lambda n: bw.PointWeights(n)])
def test_meta_learned_weights_rank_clean_above_flipped_with_default_settings(make):
    """The scale-free weight optimiser's defaults, untuned for this problem."""
    mean, flipped = train_on_label_noise(make(512))
    auroc = roc_auc_score((~flipped).numpy(), mean.numpy())
    assert auroc > 0.9, auroc
    assert float(mean[~flipped].mean() - mean[flipped].mean()) > 0.2
