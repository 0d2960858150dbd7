"""Pruning: stop visiting the instances whose weight is confidently small.

BDW prunes instance i at the end of an epoch when its Beta weight is probably below a
small value, P(w_i <= epsilon) > delta (Ericsson et al., arXiv:2006.12360; epsilon 0.1 and
delta 0.5 for STL-10), so later epochs run on less data and finish sooner. Because the rule
reads the whole distribution, an instance with a low mean but a wide distribution is kept
until the evidence is in. The scheduler offers that rule, simpler ones and random and
lowest-weight controls (`rules`, registered by name in `PRUNING_RULES`); it can also prune
softly, as InfoBatch does (Qin et al., "InfoBatch: Lossless Training Speed Up by Unbiased
Dynamic Data Pruning", ICLR 2024), so that an early mistake is not permanent
(`PruningSchedule`).

Usage::

    pruner = PruningScheduler(weights, CDFRule(epsilon=0.1, delta=0.5))
    # the same, by name:  PruningScheduler(weights, rule="cdf", epsilon=0.1, delta=0.5)
    for epoch in range(epochs):
        for x, idx in pruner.loader(pool, batch_size=32):   # kept instances only
            ...
        pruner.step()                                        # decide at the epoch's end

In soft mode, scale each instance's loss by `PruningScheduler.loss_scale` (here with
`MetaWeighter` and four rotations per image)::

    pruner = PruningScheduler(weights, "cdf", PruningSchedule(soft=True),
                              total_epochs=epochs)
    for x, idx in pruner.loader(pool, batch_size=32):
        x, y = bw.rotate4(x)
        scale = pruner.loss_scale(idx).repeat_interleave(4).to(x.device)
        meta.backward(x, lambda out: scale * F.cross_entropy(out, y, reduction="none"), idx)
        optimizer.step(); optimizer.zero_grad()
"""

from __future__ import annotations

from betaweighter.pruning.loaders import unpruned_loader, unpruned_sampler
from betaweighter.pruning.rules import (
    CONTROL_RULES,
    PRUNING_RULES,
    BudgetRule,
    Candidates,
    CDFRule,
    LowestRule,
    MatchedRule,
    PruningRule,
    QuantileRule,
    RandomRule,
    ThresholdRule,
    register_pruning_rule,
)
from betaweighter.pruning.schedule import PruningSchedule
from betaweighter.pruning.scheduler import STATE_FORMAT, PruningScheduler

__all__ = ["CONTROL_RULES", "PRUNING_RULES", "RULES", "STATE_FORMAT", "BudgetRule", "CDFRule",
           "Candidates", "LowestRule", "MatchedRule", "PruningRule", "PruningSchedule",
           "PruningScheduler", "QuantileRule", "RandomRule", "ThresholdRule",
           "register_pruning_rule", "unpruned_loader", "unpruned_sampler"]

#: The built-in rules' names (`PRUNING_RULES` also holds those registered later).
RULES = PRUNING_RULES.names()
