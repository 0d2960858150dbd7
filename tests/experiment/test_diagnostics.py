"""Per-epoch diagnostics per kind, and a verdict that says what the weights separate."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from betaweighter.experiment.diagnostics import verdict, weight_diagnostics
from betaweighter.weights import BetaWeights

BASE = {"weight_spread", "confident_low", "confident_high", "meta_grad_scale",
        "median_visits", "auroc_in_domain", "pruned_in_domain_share"}
# 4 in-domain (two kinds), 3 noise, 3 web
KINDS = ["shapes", "shapes", "cats", "cats", "noise", "noise", "noise", "web", "web", "web"]
IN_DOMAIN = np.array([k in ("shapes", "cats") for k in KINDS])
MEANS = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.85, 0.5, 0.65])


def _weights(means: np.ndarray, concentration: float = 40.0) -> BetaWeights:
    """Beta weights with the given means (alpha + beta = `concentration`)."""
    w = BetaWeights(len(means))
    with torch.no_grad():
        w.log_alpha.copy_(torch.log(torch.as_tensor(means * concentration)))
        w.log_beta.copy_(torch.log(torch.as_tensor((1 - means) * concentration)))
    return w


def _pruner(*indices: int) -> SimpleNamespace:
    pruned = np.zeros(len(KINDS), bool)
    pruned[list(indices)] = True
    return SimpleNamespace(pruned=pruned)


def test_per_kind_aurocs_and_pruned_fractions():
    w = _weights(MEANS)
    out = weight_diagnostics(w, None, 0.1, 0.5, IN_DOMAIN, _pruner(4, 5, 8), kinds=KINDS)
    extra = set(out) - BASE
    assert extra == {"auroc_noise", "auroc_web", "pruned_cats", "pruned_noise",
                     "pruned_shapes", "pruned_web"}
    assert out["auroc_noise"] == 1.0  # every in-domain mean is above every noise mean
    web = IN_DOMAIN | (np.array(KINDS) == "web")
    assert out["auroc_web"] == pytest.approx(roc_auc_score(IN_DOMAIN[web], MEANS[web]))
    assert out["auroc_web"] < 1.0
    assert out["pruned_noise"] == pytest.approx(2 / 3) and out["pruned_web"] == pytest.approx(1 / 3)
    assert out["pruned_cats"] == 0.0 and out["pruned_shapes"] == 0.0
    assert out["auroc_in_domain"] == pytest.approx(roc_auc_score(IN_DOMAIN, MEANS))
    assert out["pruned_in_domain_share"] == 0.0


def test_the_same_columns_every_epoch_and_old_columns_unchanged():
    w = _weights(MEANS)
    before = weight_diagnostics(w, None, 0.1, 0.5, IN_DOMAIN, _pruner())
    assert set(before) == BASE  # without kinds: exactly the columns there always were
    rows = [weight_diagnostics(w, None, 0.1, 0.5, IN_DOMAIN, p, kinds=KINDS)
            for p in (None, _pruner(), _pruner(0, 9))]
    assert [list(r) for r in rows] == [list(rows[0])] * 3  # same names, same order
    for key in BASE - {"pruned_in_domain_share"}:
        assert rows[1][key] == before[key] or (math.isnan(rows[1][key]) and math.isnan(before[key]))
    assert all(math.isnan(v) for k, v in rows[0].items() if k.startswith("pruned_"))
    assert rows[2]["pruned_shapes"] == 0.5 and rows[2]["pruned_web"] == pytest.approx(1 / 3)
    assert set(weight_diagnostics(w, None, 0.1, 0.5, None, None, kinds=KINDS)) == BASE


def test_kinds_that_would_overwrite_columns_are_refused():
    with pytest.raises(ValueError, match="in_domain"):
        weight_diagnostics(_weights(MEANS), None, 0.1, 0.5, IN_DOMAIN, None,
                           kinds=["in_domain"] * len(KINDS))


# -- the verdict --------------------------------------------------------------------------
SPREAD = np.r_[np.full(20, 0.02), np.full(80, 0.6)]  # 20% confidently low
FLAT = np.full(100, 0.5)


def test_spread_alone_is_never_called_separated():
    w = _weights(SPREAD, concentration=200.0)
    for row in ({"epoch": "3", "auroc_in_domain": "nan", "pruned_in_domain_share": "nan"},
                {"epoch": "3"}):
        text = verdict(w, torch.full((100,), 7.0), 0.1, 0.5, row)
        assert text.startswith("weights have spread: 20.0% of the pool is confidently low")
        assert "separated" not in text
        assert "spread alone does not show" in text.lower()
        assert "data.options.domains" in text
    assert "no readable row for this epoch" in verdict(w, None, 0.1, 0.5, None)


def test_a_known_domain_says_what_the_weights_separate():
    w = _weights(SPREAD, concentration=200.0)
    row = {"epoch": "3", "auroc_in_domain": "0.91", "auroc_noise": "0.99", "auroc_web": "0.62",
           "pruned_in_domain_share": "0.05", "pruned_in_domain": "1", "pruned": "20",
           "pruned_noise": "0.8", "pruned_web": "0.1", "pruned_shapes": "0.01",
           "kept_fraction": "0.7"}
    text = verdict(w, torch.full((100,), 7.0), 0.1, 0.5, row)
    assert "random pruning of as many would take 30% of every kind" in text
    assert "they separate in-domain from out-of-domain data: in-domain vs out-of-domain " \
           "AUROC 0.91 (per kind: noise 0.99, web 0.62)" in text
    assert "5% of what was pruned is in-domain" in text
    assert "(pruned so far: noise 80%, shapes 1%, web 10%)" in text
    low = verdict(w, None, 0.1, 0.5, {"auroc_in_domain": "0.30",
                                      "pruned_in_domain_share": "0.9"})
    assert "rank out-of-domain data above in-domain data" in low and "AUROC 0.30" in low
    assert "do not separate" in verdict(w, None, 0.1, 0.5, {"auroc_in_domain": "0.5"})


def test_weights_that_have_not_spread_report_the_auroc_so_far():
    w = _weights(FLAT, concentration=2.0)
    text = verdict(w, torch.full((100,), 2.0), 0.1, 0.5,
                   {"auroc_in_domain": "0.66", "pruned_in_domain_share": "nan"})
    assert text.startswith("weights have not spread yet (2 visits per instance")
    assert "So far: they separate in-domain from out-of-domain data only weakly: " \
           "in-domain vs out-of-domain AUROC 0.66; nothing pruned" in text
    plain = verdict(w, torch.full((100,), 2.0), 0.1, 0.5, {"auroc_in_domain": ""})
    assert "AUROC" not in plain and "So far" not in plain
