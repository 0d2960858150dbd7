"""When a pruning rule decides, how much it may prune, and soft (InfoBatch-style) pruning."""

from __future__ import annotations

from dataclasses import dataclass

from betaweighter.data.options import Range, integer
from betaweighter.pruning.declare import check_fields, option

__all__ = ["PruningSchedule"]


@dataclass(frozen=True)
class PruningSchedule:
    """The cadence of `PruningScheduler`'s decisions, whatever the rule.

    Soft mode (Qin et al., "InfoBatch", ICLR 2024): each decision *flags* instances instead
    of removing them (and replaces the previous flags); every epoch each flagged instance is
    skipped with probability `skip_prob`, drawn afresh, and a flagged instance that is
    visited has its loss multiplied by ``1 / (1 - skip_prob)``, so the expected gradient
    over the epoch is unchanged. The last `anneal_epochs` epochs (default
    ``ceil(0.125 * total_epochs)``, InfoBatch's 0.875 schedule) visit the whole pool.
    """

    score_epochs: int | None = option(
        None, integer(1), "after this many epochs, stop learning the weights and train "
        "plainly on what is kept (the budget rule decides then); null: learn them throughout")
    warmup: int = option(0, integer(0), "no decision at the end of the first `warmup` epochs")
    every: int = option(1, integer(1), "then decide at the end of every `every`-th epoch")
    max_fraction: float = option(
        1.0, Range(0, 1), "never prune more than this fraction of the pool in total (the "
        "most prunable go first)")
    soft: bool = option(
        False, None, "InfoBatch-style soft pruning: flag instead of remove, skip each flagged "
        "instance with probability `skip_prob` and rescale its loss when visited")
    skip_prob: float = option(
        0.5, Range(0, 1, hi_open=True), "soft mode: the probability that a flagged instance "
        "is skipped in an epoch")
    anneal_epochs: int | None = option(
        None, integer(0), "soft mode: the last epochs visit the whole pool; null: "
        "ceil(0.125 * train.epochs)")

    def __post_init__(self) -> None:
        check_fields(self)
