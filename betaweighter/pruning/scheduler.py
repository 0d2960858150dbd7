"""PruningScheduler: which instances of the pool each epoch visits, decided at epoch ends."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from betaweighter.data.options import integer
from betaweighter.data.sampler import SKIP_STREAM, SubsetEpochSampler, epoch_rng
from betaweighter.pruning.rules import (
    CONTROL_RULES,
    PRUNING_RULES,
    Candidates,
    MatchedRule,
    PruningRule,
    rule_options,
)
from betaweighter.pruning.schedule import PruningSchedule
from betaweighter.runtime import world
from betaweighter.weights.base import InstanceWeights

__all__ = ["STATE_FORMAT", "PruningScheduler"]

STATE_FORMAT = "betaweighter-pruning-v1"
#: the keys of `PruningScheduler.config` besides the rule's options and the schedule's
_RUN_KEYS = ("total_epochs", "anneal_epochs", "seed", "num_instances")


class PruningScheduler:
    """Decides, epoch by epoch, which instances of the pool the training loop visits.

    Args:
        weights: any `InstanceWeights`; only ``num_instances``, ``mean`` and ``cdf`` are read.
        rule: which candidates a decision prunes (the kept instances; in soft mode, all of
            them): a rule object (`CDFRule`, `ThresholdRule`, `QuantileRule`, `BudgetRule`,
            `RandomRule`, `LowestRule`, or one registered with `register_pruning_rule`), or
            its registered name, whose options are then given as keywords.
        schedule: when decisions are made, how much may be pruned, soft mode
            (`PruningSchedule`); or give its fields as keywords.
        total_epochs: the run's length: soft mode returns to the whole pool for its last
            `anneal_epochs` (default ``ceil(0.125 * total_epochs)``).
        seed: seeds the loader's order, the random rule and the soft skips; each is drawn
            from (seed, epoch, purpose), so decisions and orders are reproducible and a
            resumed run repeats them exactly.
        in_domain: optional bool mask over the pool; the history then counts how many
            pruned instances were in-domain.
        sync: under `torch.distributed`, take every decision from rank 0 so that all
            processes agree even if their weights drifted apart.
        **options: the shorthand: a field of the rule named by `rule` (``epsilon=0.1``; of
            the rule a named ``control`` copies, too) or of `PruningSchedule`
            (``soft=True``). A field of another built-in rule is checked and ignored, so a
            loop over rule names can pass every option; any other name is a TypeError.

    `score_epochs` ends the scoring phase for any rule: `scoring` is False from then on
    (stop the meta steps, e.g. ``meta.plain = True``), so a matched control trains plainly
    from the same epoch. Without soft mode, pruning is permanent, as in the paper: once
    pruned, an instance is never visited again and its weights stop changing.
    """

    def __init__(self, weights: InstanceWeights, rule: PruningRule | str = "cdf",
                 schedule: PruningSchedule | None = None, *, total_epochs: int | None = None,
                 seed: int = 0, in_domain: Any = None, sync: bool = True,
                 **options: Any) -> None:
        rule, schedule = _resolve(rule, schedule, options)
        for name, value, allowed in (("seed", seed, integer(0)),
                                     ("total_epochs", total_epochs, integer(1))):
            found = None if value is None else allowed.problem(value)
            if found is not None:
                raise ValueError(f"PruningScheduler: {name}: {found}")
        rule.check(schedule)
        anneal = schedule.anneal_epochs
        if schedule.soft and total_epochs is None and anneal != 0:
            raise ValueError("soft pruning returns to the full pool for the last epochs: pass "
                             "total_epochs=... (or anneal_epochs=0 to never return)")
        if anneal is None:
            anneal = math.ceil(0.125 * total_epochs) if schedule.soft and total_epochs else 0
        self.weights, self.rule, self.schedule = weights, rule, schedule
        self.num_instances = int(weights.num_instances)
        self.total_epochs, self.anneal_epochs = total_epochs, int(anneal)
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

    # the schedule's options, read where the loop and the decisions need them
    @property
    def soft(self) -> bool:
        return self.schedule.soft

    @property
    def skip_prob(self) -> float:
        return self.schedule.skip_prob

    @property
    def score_epochs(self) -> int | None:
        return self.schedule.score_epochs

    @property
    def config(self) -> dict[str, Any]:
        """The settings that decide what is pruned (saved in `state_dict`): the rule's name
        and options, the schedule, the run's length, seed and pool size. Options of other
        built-in rules appear at their declared defaults, as states have always held them."""
        config: dict[str, Any] = {"rule": self.rule.name, **_unused_defaults(),
                                  **rule_options(self.rule),
                                  **dataclasses.asdict(self.schedule)}
        config.update(total_epochs=self.total_epochs, anneal_epochs=self.anneal_epochs,
                      seed=self.seed, num_instances=self.num_instances)
        return config

    def _compared(self) -> tuple[str, ...]:
        """The `config` keys that change what is pruned (a saved state must match them)."""
        return ("rule", *rule_options(self.rule),
                *(f.name for f in dataclasses.fields(self.schedule)), *_RUN_KEYS)

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
        s = self.schedule
        due = self.rule.due(s, self.epoch)
        if due is None:
            due = (self.epoch > s.warmup and (self.epoch - s.warmup - 1) % s.every == 0
                   and not (self.soft and self._annealing(self.epoch)))
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
        most = math.floor(self.schedule.max_fraction * self.num_instances + 1e-9)
        return self.rule.choose(Candidates(self.weights, candidates, max(0, most - already),
                                           self.num_instances, self.epoch, self.seed))

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
        run is extended) and options no part of this rule reads."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a PruningScheduler state (format {STATE_FORMAT!r} expected)")
        saved = {"keep": 0.5, "score_epochs": None, **state["config"]}  # older states
        config = self.config
        differ = sorted(k for k in self._compared() if saved.get(k) != config[k]
                        and k not in allow_changed)
        if differ:
            pairs = ", ".join(f"{k}: saved {saved.get(k)!r}, now {config[k]!r}"
                              for k in differ)
            raise ValueError(f"the saved pruning state was made with other settings ({pairs})")
        self.epoch = int(state["epoch"])
        self.pruned = np.asarray(torch.as_tensor(state["pruned"]).cpu().numpy(), dtype=bool)
        self.history = [dict(r) for r in state["history"]]
        self._active = None


def _resolve(rule: PruningRule | str, schedule: PruningSchedule | None,
             options: dict[str, Any]) -> tuple[PruningRule, PruningSchedule]:
    """The rule and schedule objects of the constructor's arguments: a rule name's options
    and the schedule's fields may come as keywords (the shorthand)."""
    sched_names = {f.name for f in dataclasses.fields(PruningSchedule)}
    sched_opts = {k: v for k, v in options.items() if k in sched_names}
    rule_opts = {k: v for k, v in options.items() if k not in sched_names}
    if schedule is None:
        schedule = PruningSchedule(**sched_opts)
    elif sched_opts:
        raise TypeError(f"schedule options {sorted(sched_opts)} given besides schedule=: set "
                        "them in the PruningSchedule")
    if isinstance(rule, PruningRule):
        if rule_opts:
            raise TypeError(f"options {sorted(rule_opts)} given besides the rule object "
                            f"{rule!r}: set them in the rule")
        return rule, schedule
    cls = PRUNING_RULES.get(rule).obj
    own = _field_names(cls)
    named = rule_opts.get("control", _defaults(cls).get("control"))
    if issubclass(cls, MatchedRule) and isinstance(named, str):
        control = CONTROL_RULES.get(named).obj
        taken = {k: rule_opts.pop(k) for k in _field_names(control) & set(rule_opts)}
        rule_opts["control"] = control(**taken)
    _check_unused({k: v for k, v in rule_opts.items() if k not in own}, rule, sched_names)
    return cls(**{k: v for k, v in rule_opts.items() if k in own}), schedule


def _check_unused(options: dict[str, Any], rule: str, sched_names: set[str]) -> None:
    """Options of another built-in rule are checked by that rule and ignored (as they have
    always been); a name no rule declares is a TypeError listing the accepted ones."""
    for entry in PRUNING_RULES:
        taken = {k: options.pop(k) for k in _field_names(entry.obj) & set(options)}
        if taken:
            entry.obj(**taken)
    if options:
        accepted = sorted(set().union(*(_field_names(e.obj) for e in PRUNING_RULES))
                          | sched_names)
        raise TypeError(f"PruningScheduler got unknown options {sorted(options)} for rule "
                        f"{rule!r}; accepted: {', '.join(accepted)}")


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def _unused_defaults() -> dict[str, Any]:
    """Every option of the registered rules at its declared default (a control by name)."""
    out: dict[str, Any] = {}
    for entry in reversed(list(PRUNING_RULES)):  # the first rule declaring a name wins
        out.update(_defaults(entry.obj))
    return out


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
