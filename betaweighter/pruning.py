"""Pruning: stop visiting the instances whose weight is confidently small.

BDW prunes instance i at the end of an epoch when its Beta weight is probably below a
small value, P(w_i <= epsilon) > delta (Ericsson et al., arXiv:2006.12360; epsilon 0.1 and
delta 0.5 for STL-10), so later epochs run on less data and finish sooner. Because the rule
reads the whole distribution, an instance with a low mean but a wide distribution is kept
until the evidence is in. The scheduler offers that rule, two simpler ones and a random
control; it can also prune softly, as InfoBatch does (Qin et al., "InfoBatch: Lossless
Training Speed Up by Unbiased Dynamic Data Pruning", ICLR 2024), so that an early mistake
is not permanent.

Usage::

    pruner = PruningScheduler(weights, rule="cdf", epsilon=0.1, delta=0.5)
    for epoch in range(epochs):
        for x, idx in pruner.loader(pool, batch_size=32):   # kept instances only
            ...
        pruner.step()                                        # decide at the epoch's end

In soft mode, scale each instance's loss by `PruningScheduler.loss_scale` (here with
`MetaWeighter` and four rotations per image)::

    pruner = PruningScheduler(weights, rule="cdf", soft=True, total_epochs=epochs)
    for x, idx in pruner.loader(pool, batch_size=32):
        x, y = bw.rotate4(x)
        scale = pruner.loss_scale(idx).repeat_interleave(4).to(x.device)
        meta.backward(x, lambda out: scale * F.cross_entropy(out, y, reduction="none"), idx)
        optimizer.step(); optimizer.zero_grad()
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from betaweighter.data.sampler import RANDOM_RULE_STREAM, SKIP_STREAM, SubsetEpochSampler, epoch_rng
from betaweighter.runtime import world
from betaweighter.weights.base import InstanceWeights

__all__ = ["RULES", "PruningScheduler", "unpruned_loader", "unpruned_sampler"]

RULES = ("cdf", "threshold", "quantile", "budget", "random", "lowest")
#: rules that prune by a count taken from `control` (a rule's count, or a matched run's)
MATCHED = ("random", "lowest")
STATE_FORMAT = "betaweighter-pruning-v1"


class PruningScheduler:
    """Decides, epoch by epoch, which instances of the pool the training loop visits.

    Rules (the candidates are the kept instances; in soft mode, all of them):

    * ``"cdf"``: prune i when P(w_i <= `epsilon`) > `delta` (the paper's rule);
    * ``"threshold"``: prune i when its mean weight is <= `epsilon`;
    * ``"quantile"``: prune the `quantile` fraction of the candidates with the lowest mean
      weight (rounded down; ties broken by index);
    * ``"budget"``: keep the fraction `keep` of the pool, chosen by the weights: one
      decision, at the end of epoch `score_epochs`, prunes the lowest-weight instances
      (ties broken by index) down to ``floor(keep * N)`` kept. The weights are learnt in
      those first epochs (the scoring phase); afterwards the loop trains plainly on what is
      kept (`scoring` turns False: stop the meta steps, e.g. ``meta.plain = True``).
    * ``"random"``: prune as many as `control` says, chosen uniformly at random: the control
      any pruning claim needs. `control` is a rule name (the count that rule would prune
      now) or a sequence of counts per epoch (``[r["decided_count"] for r in
      other.history]`` of the run being matched: instances newly pruned, or flagged in soft
      mode).
    * ``"lowest"``: prune as many as `control` says, the lowest-weight first: another
      weighting's choice at a matched kept fraction (e.g. the NN-Weighter control).

    Args:
        weights: any `InstanceWeights`; only ``num_instances``, ``mean`` and ``cdf`` are read.
        keep: the fraction of the pool the budget rule keeps.
        score_epochs: the length of the scoring phase: the budget rule decides at the end of
            this epoch, and `scoring` is False from then on, for any rule (so a matched
            control trains plainly from the same epoch). None: weights are learnt
            throughout (required for the budget rule).
        warmup: no decision at the end of the first `warmup` epochs.
        every: then decide at the end of every `every`-th epoch.
        max_fraction: never prune more than this fraction of the pool in total (the most
            prunable go first: highest CDF, lowest mean, or random order).
        soft: InfoBatch-style soft pruning. Each decision *flags* instances instead of
            removing them (and replaces the previous flags); every epoch each flagged
            instance is skipped with probability `skip_prob`, drawn afresh, and a flagged
            instance that is visited has its loss multiplied by ``1 / (1 - skip_prob)``, so
            the expected gradient over the epoch is unchanged. Get the factors for a batch
            from `loss_scale`. The last `anneal_epochs` of `total_epochs` (default
            ``ceil(0.125 * total_epochs)``, InfoBatch's 0.875 schedule) visit the whole pool
            with factors 1.
        seed: seeds the loader's order, the random rule and the soft skips; each is drawn
            from (seed, epoch, purpose), so decisions and orders are reproducible and a
            resumed run repeats them exactly.
        in_domain: optional bool mask over the pool; the history then counts how many
            pruned instances were in-domain.
        sync: under `torch.distributed`, take every decision from rank 0 so that all
            processes agree even if their weights drifted apart.

    Without soft mode, pruning is permanent, as in the paper: once pruned, an instance is
    never visited again and its weights stop changing.
    """

    def __init__(
        self,
        weights: InstanceWeights,
        rule: str = "cdf",
        *,
        epsilon: float = 0.1,
        delta: float = 0.5,
        quantile: float = 0.1,
        keep: float = 0.5,
        score_epochs: int | None = None,
        control: str | Sequence[int] = "cdf",
        warmup: int = 0,
        every: int = 1,
        max_fraction: float = 1.0,
        soft: bool = False,
        skip_prob: float = 0.5,
        total_epochs: int | None = None,
        anneal_epochs: int | None = None,
        seed: int = 0,
        in_domain: Any = None,
        sync: bool = True,
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        ranked = tuple(r for r in RULES if r not in MATCHED)
        if isinstance(control, str):
            if control not in ranked:
                raise ValueError(f"control must be a rule of {ranked} or a list of counts")
        else:
            control = [_count(c) for c in control]
        checks = {"epsilon": _number(epsilon) and 0 <= epsilon <= 1,
                  "delta": _number(delta) and 0 <= delta < 1,
                  "quantile": _number(quantile) and 0 <= quantile < 1,
                  "keep": _number(keep) and 0 < keep <= 1,
                  "max_fraction": _number(max_fraction) and 0 <= max_fraction <= 1,
                  "skip_prob": _number(skip_prob) and 0 <= skip_prob < 1,
                  "warmup": _integer(warmup, 0), "every": _integer(every, 1),
                  "seed": _integer(seed, 0),
                  "score_epochs": score_epochs is None or _integer(score_epochs, 1),
                  "total_epochs": total_epochs is None or _integer(total_epochs, 1),
                  "anneal_epochs": anneal_epochs is None or _integer(anneal_epochs, 0)}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid {bad}: need 0 <= epsilon <= 1, 0 <= delta, quantile, "
                             "skip_prob < 1, 0 < keep <= 1, 0 <= max_fraction <= 1, integers "
                             "warmup >= 0, every >= 1, seed >= 0, score_epochs and "
                             "total_epochs >= 1 (or None), anneal_epochs >= 0 (or None)")
        if rule == "budget" and score_epochs is None:
            raise ValueError("rule='budget' decides once, when the scoring phase ends: pass "
                             "score_epochs=N (e.g. 2)")
        if rule == "budget" and soft:
            raise ValueError("rule='budget' prunes once and for good; soft=True re-decides "
                             "every epoch: use one or the other")
        if soft and total_epochs is None and anneal_epochs != 0:
            raise ValueError("soft pruning returns to the full pool for the last epochs: pass "
                             "total_epochs=... (or anneal_epochs=0 to never return)")
        if anneal_epochs is None:
            anneal_epochs = math.ceil(0.125 * total_epochs) if soft and total_epochs else 0
        self.weights = weights
        self.num_instances = int(weights.num_instances)
        self.rule, self.epsilon, self.delta = rule, float(epsilon), float(delta)
        self.quantile, self.control = float(quantile), control
        self.keep = float(keep)
        self.score_epochs = None if score_epochs is None else int(score_epochs)
        self.warmup, self.every, self.max_fraction = int(warmup), int(every), float(max_fraction)
        self.soft, self.skip_prob = bool(soft), float(skip_prob)
        self.total_epochs, self.anneal_epochs = total_epochs, int(anneal_epochs)
        self.seed = int(seed)
        self.in_domain = None if in_domain is None else np.asarray(in_domain, bool).reshape(-1)
        if self.in_domain is not None and len(self.in_domain) != self.num_instances:
            raise ValueError(f"in_domain has {len(self.in_domain)} entries for "
                             f"{self.num_instances} instances")
        self.sync = bool(sync)
        self.epoch = 0
        self.pruned = np.zeros(self.num_instances, dtype=bool)  # removed, or flagged if soft
        self.history: list[dict[str, Any]] = []
        self._active: tuple[int, np.ndarray] | None = None
        self._loader: tuple[tuple, DataLoader] | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The settings that decide what is pruned (saved in `state_dict`)."""
        keys = ("rule", "epsilon", "delta", "quantile", "keep", "score_epochs", "control",
                "warmup", "every",
                "max_fraction", "soft", "skip_prob", "total_epochs", "anneal_epochs", "seed",
                "num_instances")
        return {k: getattr(self, k) for k in keys}

    # -- what the training loop calls ----------------------------------------------------
    def loader(self, pool: Any, batch_size: int = 32, *, shuffle: bool = True,
               **dataloader_kwargs: Any) -> DataLoader:
        """A DataLoader over `pool` that visits only this epoch's instances, in an order
        drawn from (seed, epoch), sharded across processes under `torch.distributed`.

        Any DataLoader argument may be passed (``num_workers``, ``pin_memory``,
        ``drop_last``, ...). The sampler asks the scheduler for the instances at the start
        of every pass, so the returned loader stays valid across epochs; calling this again
        with the same pool and arguments returns the same object (persistent workers live).
        """
        if len(pool) != self.num_instances:
            raise ValueError(f"the pool has {len(pool)} instances but the weights have "
                             f"{self.num_instances}: build both from the same dataset")
        key = (id(pool), batch_size, shuffle, tuple(sorted(dataloader_kwargs.items())))
        if self._loader is not None and self._loader[0] == key:
            return self._loader[1]
        loader = DataLoader(pool, batch_size=batch_size, sampler=self.sampler(shuffle),
                            **dataloader_kwargs)
        self._loader = (key, loader)
        return loader

    def sampler(self, shuffle: bool = True) -> SubsetEpochSampler:
        """The sampler `loader` uses: this epoch's kept instances, in an order drawn from
        (seed, epoch), this process's share of them under `torch.distributed`."""
        replicas, rank = world()
        return SubsetEpochSampler(lambda: (self.active_indices(), self.epoch), self.seed,
                                  shuffle=shuffle, num_replicas=replicas, rank=rank)

    def loss_scale(self, indices: Any) -> Tensor:
        """Per-instance loss factors for a batch: ``1 / (1 - skip_prob)`` for a flagged
        instance in a soft-pruned epoch, 1 otherwise (always 1 without soft mode). Multiply
        each instance's loss by its factor (repeat it for rotated copies)."""
        idx = torch.as_tensor(indices)
        scale = torch.ones(idx.shape, dtype=torch.float32, device=idx.device)
        if self.soft and not self._annealing(self.epoch):
            flagged = torch.from_numpy(self.pruned[idx.cpu().numpy()]).to(idx.device)
            scale[flagged] = 1.0 / (1.0 - self.skip_prob)
        return scale

    def step(self) -> dict[str, Any]:
        """End the current epoch: decide (if this epoch is due), record, and return the
        record (see `history`)."""
        visited = len(self.active_indices())
        self.epoch += 1
        due = (self.epoch > self.warmup and (self.epoch - self.warmup - 1) % self.every == 0
               and not (self.soft and self._annealing(self.epoch)))
        if self.rule == "budget":
            due = self.epoch == self.score_epochs
        before = self.pruned.copy()
        if due:
            chosen = self._decide()
            if self.soft:
                self.pruned[:] = False
            self.pruned[chosen] = True
            if self.sync:
                _broadcast(self.pruned)
            if not self.soft and self.pruned.all():
                warnings.warn("every instance of the pool is now pruned: later epochs visit "
                              "nothing. Cap pruning with max_fraction < 1.", stacklevel=2)
        self._active = None
        return self._record(visited, due, before)

    # -- what the next epoch will look like ----------------------------------------------
    @property
    def scoring(self) -> bool:
        """Whether the current epoch still learns the weights: always, unless `score_epochs`
        ended the scoring phase (then the loop trains plainly on what is kept)."""
        return self.score_epochs is None or self.epoch < self.score_epochs

    @property
    def kept_fraction(self) -> float:
        """Fraction of the pool the current epoch visits."""
        return len(self.active_indices()) / self.num_instances

    def active_indices(self) -> np.ndarray:
        """Sorted indices the current epoch visits."""
        if self._active is None or self._active[0] != self.epoch:
            visit = ~self.pruned
            if self.soft:
                if self._annealing(self.epoch):
                    visit = np.ones_like(visit)
                else:
                    skip = epoch_rng(self.seed, self.epoch, SKIP_STREAM).random(
                        self.num_instances) < self.skip_prob
                    visit = visit | ~skip
            self._active = (self.epoch, np.flatnonzero(visit))
        return self._active[1]

    # -- decisions -----------------------------------------------------------------------
    def _decide(self) -> np.ndarray:
        """Indices to prune (hard) or flag (soft) now, most prunable first, within budget."""
        candidates = np.arange(self.num_instances) if self.soft else np.flatnonzero(~self.pruned)
        already = 0 if self.soft else int(self.pruned.sum())
        budget = max(0, math.floor(self.max_fraction * self.num_instances + 1e-9) - already)
        if self.rule in MATCHED:
            if isinstance(self.control, str):
                count = len(self._ranked(self.control, candidates)[:budget])
            else:  # the matched run's decided counts (newly pruned, or flagged if soft)
                count = self.control[self.epoch - 1] if self.epoch <= len(self.control) else 0
            if self.rule == "lowest":
                return self._ranked("lowest", candidates)[:min(count, budget)]
            rng = epoch_rng(self.seed, self.epoch, RANDOM_RULE_STREAM)
            return rng.permutation(candidates)[:min(count, budget)]
        return self._ranked(self.rule, candidates)[:budget]

    def _ranked(self, rule: str, candidates: np.ndarray) -> np.ndarray:
        """The candidates `rule` would prune, most prunable first."""
        if len(candidates) == 0:
            return candidates
        rows = torch.from_numpy(candidates)
        mean = _numpy(self.weights.mean(rows))
        if rule == "cdf":
            cdf = _numpy(self.weights.cdf(self.epsilon, rows))
            hit = cdf > self.delta
            order = np.lexsort((candidates[hit], mean[hit], -cdf[hit]))
            return candidates[hit][order]
        order = np.lexsort((candidates, mean))
        if rule == "threshold":
            return candidates[order][mean[order] <= self.epsilon]
        if rule == "budget":  # down to floor(keep * N) kept in all
            kept = math.floor(self.keep * self.num_instances + 1e-9)
            return candidates[order][: max(0, len(candidates) - kept)]
        if rule == "lowest":
            return candidates[order]
        return candidates[order][: math.floor(self.quantile * len(candidates) + 1e-9)]

    def _annealing(self, epoch: int) -> bool:
        """Whether 0-based `epoch` is one of the final full-pool epochs of soft mode."""
        return (self.total_epochs is not None and self.anneal_epochs > 0
                and epoch >= self.total_epochs - self.anneal_epochs)

    def _record(self, visited: int, decided: bool, before: np.ndarray) -> dict[str, Any]:
        """One row of `history`. ``decided_count`` is what the decision chose: instances
        newly removed (hard) or flagged (soft), the count a random control matches.
        ``pruned`` counts instances newly removed (hard) or skipped by the next epoch
        (soft); ``kept_fraction`` is the share the next epoch visits."""
        nxt = np.zeros(self.num_instances, dtype=bool)
        nxt[self.active_indices()] = True
        dropped = (self.pruned & ~before) if not self.soft else ~nxt
        chosen = (self.pruned & ~before) if not self.soft else (self.pruned if decided
                                                                else np.zeros_like(nxt))
        row: dict[str, Any] = {
            "epoch": self.epoch, "visited": visited, "decided": bool(decided),
            "decided_count": int(chosen.sum()),
            "pruned": int(dropped.sum()), "pruned_total": int(self.pruned.sum()),
            "kept_fraction": float(nxt.mean()),
        }
        if self.in_domain is not None:
            row["pruned_in_domain"] = int((dropped & self.in_domain).sum())
            row["kept_in_domain"] = int((nxt & self.in_domain).sum())
        self.history.append(row)
        return row

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the configuration, the epoch counter, the pruned
        (or flagged) mask and the history. Tensors and Python values only, so it loads with
        ``torch.load(..., weights_only=True)``. Random draws are functions of (seed, epoch)
        and need no generator state."""
        return {"format": STATE_FORMAT, "config": dict(self.config), "epoch": self.epoch,
                "pruned": torch.from_numpy(self.pruned.copy()),
                "history": [dict(r) for r in self.history]}

    def load_state_dict(self, state: dict[str, Any], allow_changed: tuple[str, ...] = ()
                        ) -> None:
        """Restore a `state_dict`. The configuration must match this scheduler's (resuming
        with other pruning settings would not repeat the original run), except for the
        keys in `allow_changed` (e.g. ``("total_epochs", "anneal_epochs")`` when a finished
        run is extended)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a PruningScheduler state (format {STATE_FORMAT!r} expected)")
        saved = {"keep": 0.5, "score_epochs": None, **state["config"]}  # older states
        differ = sorted(k for k in self.config if saved.get(k) != self.config[k]
                        and k not in allow_changed)
        if differ:
            pairs = ", ".join(f"{k}: saved {saved.get(k)!r}, now {self.config[k]!r}"
                              for k in differ)
            raise ValueError(f"the saved pruning state was made with other settings ({pairs})")
        self.epoch = int(state["epoch"])
        self.pruned = np.asarray(torch.as_tensor(state["pruned"]).cpu().numpy(), dtype=bool)
        self.history = [dict(r) for r in state["history"]]
        self._active = None


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x: Any, low: int) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= low


def _count(c: Any) -> int:
    if not _integer(c, 0):
        raise ValueError(f"control counts must be integers >= 0, got {c!r}")
    return int(c)


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy().reshape(-1)


def _broadcast(mask: np.ndarray) -> None:
    """Overwrite `mask` in place with rank 0's copy (a no-op outside torch.distributed)."""
    replicas, _ = world()
    if replicas == 1:
        return
    dist = torch.distributed
    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else torch.device("cpu"))
    t = torch.from_numpy(mask.astype(np.uint8)).to(device)
    dist.broadcast(t, src=0)
    mask[:] = t.cpu().numpy().astype(bool)


def unpruned_loader(pool: Any, epoch: Any, batch_size: int, seed: int = 0,
                    **dataloader_kwargs: Any) -> DataLoader:
    """A DataLoader over the whole pool in the same reproducible order as
    `PruningScheduler.loader` (drawn from (seed, epoch)), sharded across processes under
    torch.distributed: the loop of a run without pruning. `epoch` is a callable returning
    the current epoch."""
    return DataLoader(pool, batch_size=batch_size, sampler=unpruned_sampler(len(pool), epoch,
                                                                            seed),
                      **dataloader_kwargs)


def unpruned_sampler(size: int, epoch: Any, seed: int = 0) -> SubsetEpochSampler:
    """The sampler of `unpruned_loader`: all `size` instances, in an order drawn from
    (seed, epoch()), this process's share of them under torch.distributed."""
    replicas, rank = world()
    everything = np.arange(size)
    return SubsetEpochSampler(lambda: (everything, epoch()), seed, num_replicas=replicas,
                              rank=rank)
