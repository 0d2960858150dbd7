"""Loss heuristics (keep-hard, keep-easy, EL2N-style) and the random-weights control."""

from __future__ import annotations

import pytest
import torch
from helpers import one_thread  # noqa: F401 (a fixture)

import betaweighter as bw

pytestmark = pytest.mark.usefixtures("one_thread")


def _standardised_sigmoid(scores, sign):
    z = (scores - scores.mean()) / scores.std(unbiased=False)
    return torch.sigmoid(sign * z)


LOSSES = torch.tensor([0.1, 0.5, 1.0, 3.0])


@pytest.mark.parametrize("rule,sign,score", [("hard", 1.0, LOSSES),
                                             ("easy", -1.0, LOSSES),
                                             ("el2n", 1.0, 1.0 - torch.exp(-LOSSES))])
def test_weights_are_a_sigmoid_of_the_standardised_score(rule, sign, score):
    w = bw.LossHeuristicWeights(6, rule=rule)
    out = w.weights(torch.tensor([0, 1, 2, 3]), losses=LOSSES)
    torch.testing.assert_close(out, _standardised_sigmoid(score, sign))
    torch.testing.assert_close(w.mean(torch.tensor([0, 1, 2, 3])), out)
    torch.testing.assert_close(w.mean(torch.tensor([4, 5])), torch.full((2,), 0.5))  # unseen
    order = out.argsort()
    assert order.tolist() == ([0, 1, 2, 3] if sign > 0 else [3, 2, 1, 0])


def test_scores_are_bias_corrected_running_averages():
    w = bw.LossHeuristicWeights(3, rule="hard", smoothing=0.5)
    w.weights(torch.tensor([0, 1]), losses=torch.tensor([1.0, 2.0]))
    w.weights(torch.tensor([0]), losses=torch.tensor([3.0]))
    scores = w.scores()
    torch.testing.assert_close(scores[:2], torch.tensor([(0.25 * 1 + 0.5 * 3) / 0.75, 2.0]))
    assert torch.isnan(scores[2])
    # weights without losses read the scores and change nothing
    before = w.mean()
    torch.testing.assert_close(w.weights(torch.tensor([0, 1, 2])), before)
    torch.testing.assert_close(w.scores()[:2], scores[:2])


def test_el2n_is_bounded_where_the_loss_is_not():
    hard = bw.LossHeuristicWeights(3, rule="hard")
    el2n = bw.LossHeuristicWeights(3, rule="el2n")
    losses = torch.tensor([0.5, 1.0, 50.0])  # one huge loss
    hard.weights(torch.arange(3), losses)
    el2n.weights(torch.arange(3), losses)
    assert float(el2n.scores().max()) <= 1.0
    # the outlier squashes the other instances together under "hard", not under "el2n"
    assert float(el2n.mean()[1] - el2n.mean()[0]) > float(hard.mean()[1] - hard.mean()[0])


def test_heuristics_reject_bad_input():
    with pytest.raises(ValueError, match="rule"):
        bw.LossHeuristicWeights(3, rule="medium")
    with pytest.raises(ValueError, match="temperature"):
        bw.LossHeuristicWeights(3, temperature=0.0)
    w = bw.LossHeuristicWeights(3)
    with pytest.raises(ValueError, match="non-finite"):
        w.weights(torch.tensor([0]), losses=torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="2 indices"):
        w.weights(torch.tensor([0, 1]), losses=torch.ones(3))
    assert isinstance(w, bw.WeightRule)


def test_random_weights_fixed_per_instance_and_seeded():
    a, b, c = bw.RandomWeights(1000, seed=1), bw.RandomWeights(1000, seed=1), bw.RandomWeights(1000)
    assert torch.equal(a.mean(), b.mean()) and not torch.equal(a.mean(), c.mean())
    idx = torch.tensor([5, 7])
    torch.testing.assert_close(a.weights(idx, step=0), a.weights(idx, step=9))
    assert abs(float(a.mean().mean()) - 0.5) < 0.05 and float(a.std().max()) == 0.0
    torch.testing.assert_close(a.cdf(0.3), (a.mean() <= 0.3).float())


def test_resampled_random_weights_are_a_function_of_seed_and_step():
    w = bw.RandomWeights(10, resample=True, seed=3)
    idx = torch.arange(10)
    first, second = w.weights(idx, step=0), w.weights(idx, step=1)
    assert not torch.equal(first, second)
    torch.testing.assert_close(bw.RandomWeights(10, resample=True, seed=3).weights(idx, step=1),
                               second)  # what a resumed run draws at that step
    assert not torch.equal(bw.RandomWeights(10, resample=True, seed=4).weights(idx, step=1),
                           second)
    torch.testing.assert_close(w.mean(), torch.full((10,), 0.5))
    torch.testing.assert_close(w.cdf(0.3), torch.full((10,), 0.3))
    torch.testing.assert_close(w.std(), torch.full((10,), 12 ** -0.5))
