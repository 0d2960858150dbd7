"""Hand-designed weights from each instance's own pretext loss: nothing is meta-learned.

These are the cheap alternatives a meta-learned weighting has to beat. Each instance keeps
a running score, a bias-corrected exponential moving average of a per-visit statistic of
its rotation loss l (averaged over the instance's rotated copies):

* ``"hard"``: score = l; high scores get high weights. Emphasises hard examples, as loss-
  based online batch selection does (Loshchilov and Hutter, arXiv:1511.06343).
* ``"easy"``: score = l; low scores get high weights. Self-paced learning's preference for
  easy examples (Kumar, Packer and Koller, NeurIPS 2010), in a soft form.
* ``"el2n"``: score = 1 - exp(-l), the error of the predicted probability of the true
  rotation, 1 - p_y; high scores get high weights. This is EL2N-style (Paul, Ganguli and
  Dziugaite, "Deep Learning on a Data Diet", NeurIPS 2021): a bounded error norm averaged
  over visits, so a few huge losses do not dominate as they do under ``"hard"``. The
  interface passes losses only, not the probability vector, so it is not EL2N's exact
  L2 norm ||p - onehot(y)||: 1 - p_y is half its L1 counterpart, and for one copy the L2
  norm lies between sqrt(K / (K - 1)) and sqrt(2) times it (K = 4 rotations). With copies
  averaged first, p_y is their geometric mean probability.

The weight is a sigmoid of the standardised score, w_i = sigmoid(+-(s_i - mu) / (T sigma)),
where mu and sigma are the mean and standard deviation of the scores of every instance
seen so far: weights lie in (0, 1), an average instance gets 0.5 (BDW's starting mean), and
the ranking is over the whole pool rather than within one batch. An instance not seen yet
has weight 0.5. `weights` updates the batch's scores first and returns the same values
`mean` then reports; `std` is zero and `cdf` thresholds the mean.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from betaweighter.weights.base import WeightRule, register_weighting
from betaweighter.weights.running import running_average, update_running_average

__all__ = ["LossHeuristicWeights"]

RULES = ("hard", "easy", "el2n")


@register_weighting("heuristic")
class LossHeuristicWeights(WeightRule):
    """Weights from the running rotation loss: keep-hard, keep-easy or EL2N-style.

    Args:
        num_instances: size of the unlabelled pool.
        rule: ``"hard"``, ``"easy"`` or ``"el2n"`` (see the module docstring).
        temperature: T above: smaller is closer to a hard keep/drop split.
        smoothing: decay of each instance's score average (0 keeps the last visit only).
    """


    average: Tensor
    visits: Tensor

    def __init__(self, num_instances: int, rule: str = "hard", temperature: float = 1.0,
                 smoothing: float = 0.9) -> None:
        super().__init__(num_instances)
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.rule = rule
        self.temperature = float(temperature)
        self.smoothing = float(smoothing)
        self.register_buffer("average", torch.zeros(num_instances))
        self.register_buffer("visits", torch.zeros(num_instances, dtype=torch.long))

    @torch.no_grad()
    def weights(self, indices: Tensor, losses: Tensor | None = None, *, step: int = 0,
                meta_grad: Tensor | None = None) -> Tensor:
        """Update the batch's scores from `losses` (when given) and return their weights."""
        rows = cast(Tensor, self._rows(indices))  # a Tensor, as `indices` is one
        if losses is not None:
            losses = torch.as_tensor(losses).detach().reshape(-1).to(self.average)
            if losses.numel() != rows.numel():
                raise ValueError(f"losses has {losses.numel()} entries for {rows.numel()} "
                                 "indices")
            if not torch.isfinite(losses).all():
                raise ValueError("LossHeuristicWeights got a non-finite loss: the model's pretext "
                                 "loss diverged (check its learning rate)")
            scores = losses if self.rule != "el2n" else -torch.expm1(-losses)
            update_running_average(self.average, self.visits, rows, scores, self.smoothing)
        return self.mean(rows)

    def scores(self, indices: Tensor | None = None) -> Tensor:
        """Each instance's bias-corrected running score (NaN if not seen yet)."""
        return running_average(self.average, self.visits, self._rows(indices), self.smoothing)

    @torch.no_grad()
    def mean(self, indices: Tensor | None = None) -> Tensor:
        all_scores = self.scores()
        seen = all_scores[torch.isfinite(all_scores)]
        s = all_scores[self._rows(indices)]
        if seen.numel() == 0:
            return torch.full_like(s, 0.5)
        mu = seen.mean()
        sigma = seen.std(unbiased=False).clamp_min(1e-8)
        z = (s - mu) / (self.temperature * sigma)
        w = torch.sigmoid(-z if self.rule == "easy" else z)
        return torch.nan_to_num(w, nan=0.5)

    @torch.no_grad()
    def std(self, indices: Tensor | None = None) -> Tensor:
        return torch.zeros_like(self.average[self._rows(indices)])
