"""PruningScheduler: every rule against a direct computation, the loader, resuming."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils.data import TensorDataset

import betaweighter as bw
from betaweighter.pruning import PruningScheduler

N = 400


def beta_weights(alpha: np.ndarray, beta: np.ndarray) -> bw.BetaWeights:
    w = bw.BetaWeights(len(alpha))
    with torch.no_grad():
        w.log_alpha.copy_(torch.as_tensor(np.log(alpha)))
        w.log_beta.copy_(torch.as_tensor(np.log(beta)))
    return w


def known_params(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Concentrations spread so every rule prunes some and keeps some."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.3, 12, n), rng.uniform(0.3, 12, n)


def pool(n: int = N) -> bw.data.Indexed:
    return bw.data.Indexed(TensorDataset(torch.arange(n, dtype=torch.float32)[:, None]))


def visited(pruner: PruningScheduler, data, **kwargs) -> list[int]:
    return [i for _, idx in pruner.loader(data, batch_size=16, **kwargs) for i in idx.tolist()]


def test_cdf_rule_matches_scipy():
    a, b = known_params()
    pruner = PruningScheduler(beta_weights(a, b), rule="cdf", epsilon=0.1, delta=0.5)
    pruner.step()
    expected = stats.beta.cdf(0.1, a, b) > 0.5
    assert 0 < expected.sum() < N
    assert np.array_equal(pruner.pruned, expected)
    assert pruner.history[-1]["pruned"] == expected.sum()


def test_cdf_rule_uses_the_spread_not_only_the_mean():
    # Same mean 0.08 < epsilon: the wide one may still be large, the narrow one is surely small.
    w = beta_weights(np.array([0.08, 80.0]), np.array([0.92, 920.0]))
    pruner = PruningScheduler(w, rule="cdf", epsilon=0.1, delta=0.9)
    pruner.step()
    assert pruner.pruned.tolist() == [False, True]
    threshold = PruningScheduler(w, rule="threshold", epsilon=0.1)
    with pytest.warns(UserWarning, match="every instance"):
        threshold.step()
    assert threshold.pruned.tolist() == [True, True]


def test_threshold_rule_matches_the_mean():
    a, b = known_params(seed=1)
    pruner = PruningScheduler(beta_weights(a, b), rule="threshold", epsilon=0.3)
    pruner.step()
    assert np.array_equal(pruner.pruned, a / (a + b) <= 0.3)


def test_quantile_rule_drops_the_lowest_of_what_is_kept():
    a, b = known_params(seed=2)
    mean = a / (a + b)
    pruner = PruningScheduler(beta_weights(a, b), rule="quantile", quantile=0.25)
    kept = np.arange(N)
    for _ in range(3):
        pruner.step()
        drop = kept[np.argsort(mean[kept], kind="stable")[: math.floor(0.25 * len(kept))]]
        kept = np.setdiff1d(kept, drop)
        assert np.array_equal(np.flatnonzero(~pruner.pruned), kept)
    assert len(kept) == 169  # 400 -> 300 -> 225 -> 169


def test_point_weights_prune_as_a_step_function():
    w = bw.PointWeights(5)
    with torch.no_grad():
        w.value.copy_(torch.tensor([0.05, 0.5, 0.1, 0.09, 0.9]))
    pruner = PruningScheduler(w, rule="cdf", epsilon=0.1, delta=0.5)
    pruner.step()
    assert pruner.pruned.tolist() == [True, False, True, True, False]


def test_random_control_matches_the_rule_counts():
    a, b = known_params(seed=3)
    weights = beta_weights(a, b)
    cdf_run = PruningScheduler(weights, rule="cdf", epsilon=0.15, delta=0.5)
    rand = PruningScheduler(weights, rule="random", control="cdf", epsilon=0.15, seed=1)
    cdf_run.step()
    rand.step()
    assert rand.pruned.sum() == cdf_run.pruned.sum() > 0
    assert not np.array_equal(rand.pruned, cdf_run.pruned)
    # A list of counts replays another run's curve exactly.
    counts = [r["pruned"] for r in cdf_run.history] + [7, 0, 3]
    replay = PruningScheduler(weights, rule="random", control=counts, seed=2)
    for _ in range(4):
        replay.step()
    assert [r["pruned"] for r in replay.history] == counts
    again = PruningScheduler(weights, rule="random", control=counts, seed=2)
    for _ in range(4):
        again.step()
    assert np.array_equal(again.pruned, replay.pruned)  # deterministic for a seed


def test_random_control_count_follows_the_rule_on_its_own_kept_set():
    a, b = known_params(seed=4)
    weights = beta_weights(a, b)
    rand = PruningScheduler(weights, rule="random", control="threshold", epsilon=0.3, seed=0)
    low = a / (a + b) <= 0.3
    for _ in range(3):
        expected = int((low & ~rand.pruned).sum())
        rand.step()
        assert rand.history[-1]["pruned"] == expected


def test_loader_never_yields_a_pruned_index():
    a, b = known_params(seed=5)
    weights = beta_weights(a, b)
    data = pool()
    pruner = PruningScheduler(weights, rule="quantile", quantile=0.3, seed=3)
    for epoch in range(4):
        seen = visited(pruner, data, num_workers=2 if epoch == 1 else 0)
        assert sorted(seen) == np.flatnonzero(~pruner.pruned).tolist()  # each kept once
        assert len(pruner.loader(data, batch_size=16)) == math.ceil(len(seen) / 16)
        pruner.step()
    assert pruner.kept_fraction == pytest.approx(0.7**4, abs=0.01)


def test_loader_order_is_seeded_and_changes_per_epoch():
    w = beta_weights(*known_params())
    data = pool()
    one = PruningScheduler(w, rule="cdf", seed=9)
    two = PruningScheduler(w, rule="cdf", seed=9)
    first = visited(one, data)
    assert first == visited(two, data)  # same seed: identical on every process
    assert first != sorted(first)
    one.step()
    assert visited(one, data) != first
    assert visited(one, data, shuffle=False) == sorted(visited(one, data))


def test_loader_is_reused_and_checks_the_pool_size():
    pruner = PruningScheduler(beta_weights(*known_params()), rule="cdf")
    data = pool()
    assert pruner.loader(data, batch_size=8) is pruner.loader(data, batch_size=8)
    assert pruner.loader(data, batch_size=8) is not pruner.loader(data, batch_size=4)
    with pytest.raises(ValueError, match="pool has 10 instances but the weights have 400"):
        pruner.loader(pool(10))


def test_resume_repeats_decisions_and_order(tmp_path):
    a, b = known_params(seed=6)

    def run(pruner: PruningScheduler, weights: bw.BetaWeights, epochs: range) -> list:
        out = []
        for e in epochs:
            out.append(visited(pruner, pool()))
            with torch.no_grad():  # the weights move between epochs, identically
                weights.log_beta[e::7] += 0.8
            pruner.step()
            out.append(pruner.pruned.copy())
        return out

    def make(weights):
        return PruningScheduler(weights, rule="cdf", epsilon=0.2, delta=0.5, seed=5,
                                warmup=1, soft=False)

    w_full = beta_weights(a, b)
    full = make(w_full)
    trace = run(full, w_full, range(5))
    w_part = beta_weights(a, b)
    first = make(w_part)
    run(first, w_part, range(2))
    torch.save(first.state_dict(), tmp_path / "pruner.pt")
    resumed = make(w_part)
    resumed.load_state_dict(torch.load(tmp_path / "pruner.pt", weights_only=True))
    rest = run(resumed, w_part, range(2, 5))
    for x, y in zip(rest, trace[4:]):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert resumed.history == full.history


def test_resume_with_other_settings_is_refused():
    w = beta_weights(*known_params())
    state = PruningScheduler(w, rule="cdf", epsilon=0.1).state_dict()
    with pytest.raises(ValueError, match="epsilon: saved 0.1, now 0.2"):
        PruningScheduler(w, rule="cdf", epsilon=0.2).load_state_dict(state)
    with pytest.raises(ValueError, match="not a PruningScheduler state"):
        PruningScheduler(w).load_state_dict({"epoch": 3})


def test_warmup_and_every():
    pruner = PruningScheduler(beta_weights(*known_params()), rule="quantile", quantile=0.1,
                              warmup=2, every=3)
    for _ in range(9):
        pruner.step()
    assert [r["epoch"] for r in pruner.history if r["decided"]] == [3, 6, 9]
    assert [r["pruned"] > 0 for r in pruner.history] == [r["decided"] for r in pruner.history]


def test_max_fraction_keeps_the_most_certain_prunes():
    a, b = known_params(seed=7)
    cdf = stats.beta.cdf(0.4, a, b)
    assert (cdf > 0.5).mean() > 0.3
    pruner = PruningScheduler(beta_weights(a, b), rule="cdf", epsilon=0.4, max_fraction=0.2)
    pruner.step()
    pruner.step()
    assert pruner.pruned.sum() == 80
    assert cdf[pruner.pruned].min() >= cdf[~pruner.pruned].max() - 1e-12


def test_in_domain_is_counted():
    a, b = known_params(seed=8)
    mask = np.arange(N) % 3 == 0
    pruner = PruningScheduler(beta_weights(a, b), rule="threshold", epsilon=0.35,
                              in_domain=mask)
    row = pruner.step()
    low = a / (a + b) <= 0.35
    assert row["pruned_in_domain"] == (low & mask).sum()
    assert row["kept_in_domain"] == (~low & mask).sum()
    assert row["kept_fraction"] == pytest.approx(1 - low.mean())
    with pytest.raises(ValueError, match="in_domain has 3 entries"):
        PruningScheduler(beta_weights(a, b), in_domain=[True, False, True])


def test_soft_mode_is_unbiased_reversible_and_anneals():
    n = 4000
    a = np.where(np.arange(n) < n // 2, 0.5, 5.0)  # first half: low weights
    b = np.where(np.arange(n) < n // 2, 10.0, 5.0)
    weights = beta_weights(a, b)
    pruner = PruningScheduler(weights, rule="cdf", soft=True, skip_prob=0.5, total_epochs=10,
                              seed=0)
    assert pruner.anneal_epochs == 2  # ceil(0.125 * 10): the last two use the full pool
    pruner.step()
    flagged = pruner.pruned.copy()
    assert flagged.sum() == n // 2 and flagged[: n // 2].all()
    data = pool(n)
    gradient_mass = np.zeros(n)
    for _ in range(5):  # epochs 1..5 are soft-pruned
        seen = np.array(visited(pruner, data))
        assert not (~flagged[np.setdiff1d(np.arange(n), seen)]).any()  # only flagged skipped
        scale = pruner.loss_scale(torch.as_tensor(seen)).numpy()
        assert set(np.unique(scale[flagged[seen]])) == {2.0}
        assert (scale[~flagged[seen]] == 1.0).all()
        gradient_mass[seen] += scale
        pruner.step()
    assert gradient_mass[flagged].mean() / 5 == pytest.approx(1.0, abs=0.03)  # unbiased
    assert gradient_mass[~flagged].mean() / 5 == 1.0
    assert 0.45 < pruner.history[-1]["pruned"] / (n // 2) < 0.55
    # An instance whose weight recovered is no longer flagged at the next decision.
    with torch.no_grad():
        weights.log_alpha[:10] = math.log(8.0)
    row = pruner.step()  # the end of the 7th epoch decides for the 8th
    assert row["decided"] and row["pruned_total"] == n // 2 - 10 and not pruner.pruned[:10].any()
    assert pruner.kept_fraction < 1.0
    assert not pruner.step()["decided"]  # the 9th and 10th epochs (of 10) ...
    assert pruner.kept_fraction == 1.0  # ... visit the full pool ...
    assert (pruner.loss_scale(torch.arange(n)) == 1).all()  # ... with plain losses
    assert not pruner.step()["decided"] and pruner.kept_fraction == 1.0


def test_soft_mode_needs_a_horizon():
    w = beta_weights(*known_params())
    with pytest.raises(ValueError, match="total_epochs"):
        PruningScheduler(w, soft=True)
    assert PruningScheduler(w, soft=True, anneal_epochs=0).anneal_epochs == 0


def test_pruning_everything_warns():
    w = beta_weights(np.full(4, 0.1), np.full(4, 50.0))
    with pytest.warns(UserWarning, match="every instance of the pool is now pruned"):
        PruningScheduler(w, rule="cdf").step()


def test_hard_mode_loss_scale_is_one():
    pruner = PruningScheduler(beta_weights(*known_params()))
    pruner.step()
    assert torch.equal(pruner.loss_scale(torch.tensor([0, 5, 7])), torch.ones(3))


@pytest.mark.parametrize("bad", [{"rule": "median"}, {"delta": 1.0}, {"quantile": -0.1},
                                 {"every": 0}, {"max_fraction": 1.5}, {"control": "random"},
                                 {"seed": -1}])
def test_bad_settings(bad):
    with pytest.raises(ValueError):
        PruningScheduler(beta_weights(*known_params()), **bad)


def test_decisions_come_from_rank_zero(monkeypatch):
    """Two ranks whose weights disagree end with rank 0's decision (broadcast simulated)."""
    import betaweighter.pruning.scheduler as scheduler

    sent: dict[str, torch.Tensor] = {}

    def fake_broadcast(tensor: torch.Tensor, src: int) -> None:
        if "mask" not in sent:  # rank 0 runs first and sends
            sent["mask"] = tensor.clone()
        tensor.copy_(sent["mask"])

    monkeypatch.setattr(torch.distributed, "get_backend", lambda: "gloo")
    monkeypatch.setattr(torch.distributed, "broadcast", fake_broadcast)
    masks = []
    for rank in (0, 1):
        monkeypatch.setattr(scheduler, "world", lambda rank=rank: (2, rank))
        pruner = PruningScheduler(beta_weights(*known_params(seed=rank)), rule="cdf",
                                  epsilon=0.2)
        pruner.step()
        masks.append(pruner.pruned)
    a, b = known_params(seed=0)
    assert np.array_equal(masks[0], stats.beta.cdf(0.2, a, b) > 0.5)
    assert np.array_equal(masks[1], masks[0])


WORKER = """
import json, sys
import torch, torch.distributed as dist
sys.path.insert(0, sys.argv[3])
from test_pruning import beta_weights, known_params, pool, visited
from betaweighter.pruning import PruningScheduler
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
pruner = PruningScheduler(beta_weights(*known_params(seed=rank)), rule="cdf", epsilon=0.2)
pruner.step()
print(json.dumps({"mask": pruner.pruned.tolist(), "seen": visited(pruner, pool())}))
import betaweighter.runtime
betaweighter.runtime.finish_distributed()  # gloo: leaves before the teardown
raise SystemExit("finish_distributed returned under gloo")
"""


def test_decisions_identical_on_every_process(tmp_path):
    """Real torch.distributed (gloo, two fresh interpreters): one decision, disjoint shares."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "store"),
                               str(Path(__file__).parent)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for r in range(2)]
    try:
        results = [p.communicate(timeout=120) for p in procs]
    finally:  # never leave a process behind, even on a timeout
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
    outs = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    mask0, mask1 = (np.array(o["mask"]) for o in outs)
    seen0, seen1 = outs[0]["seen"], outs[1]["seen"]
    a, b = known_params(seed=0)
    assert np.array_equal(mask0, mask1)
    assert np.array_equal(mask0, stats.beta.cdf(0.2, a, b) > 0.5)  # rank 0's decision
    kept = np.flatnonzero(~mask0).tolist()
    assert len(seen0) == len(seen1) == math.ceil(len(kept) / 2)  # equal shares ...
    assert sorted(set(seen0) | set(seen1)) == kept  # ... covering the kept set
    assert len(set(seen0) & set(seen1)) == len(seen0) + len(seen1) - len(kept)  # padding only


def test_unpruned_loader_visits_every_instance_in_a_seeded_order_per_epoch():
    from betaweighter.pruning import unpruned_loader

    data = torch.utils.data.TensorDataset(torch.arange(10))
    epoch = [0]
    loader = unpruned_loader(data, lambda: epoch[0], batch_size=4, seed=5)
    first = torch.cat([b[0] for b in loader]).tolist()
    assert sorted(first) == list(range(10)) and first == torch.cat(
        [b[0] for b in loader]).tolist()
    epoch[0] = 1
    assert torch.cat([b[0] for b in loader]).tolist() != first


def test_soft_random_control_flags_exactly_the_matched_runs_counts():
    """The control reads each epoch's *decided* count (instances flagged), not the number
    the next epoch skips (about skip_prob of the flagged)."""
    a, b = known_params(seed=3)
    weights = beta_weights(a, b)
    matched = PruningScheduler(weights, rule="cdf", epsilon=0.3, soft=True, total_epochs=8,
                               seed=1)
    for _ in range(4):
        matched.step()
    counts = [r["decided_count"] for r in matched.history]
    assert counts[0] > 0 and all(r["decided_count"] == int(r["pruned_total"])
                                 for r in matched.history)
    control = PruningScheduler(weights, rule="random", control=counts, soft=True,
                               total_epochs=8, seed=2)
    for _ in range(4):
        control.step()
    assert [r["decided_count"] for r in control.history] == counts
    assert [int(control.pruned.sum())] == [counts[-1]]
    skipped = [r["pruned"] for r in matched.history]
    assert skipped != counts  # what the old control wrongly read: about half


# -- the budget mode, the matched "lowest" rule, and argument checks -----------------------
def point_weights(values: np.ndarray) -> bw.PointWeights:
    w = bw.PointWeights(len(values))
    with torch.no_grad():
        w.value.copy_(torch.as_tensor(values))
    return w


def test_budget_keeps_the_highest_weights_once_when_scoring_ends():
    values = np.random.default_rng(0).uniform(0, 1, N)
    values[:10] = 0.3  # ties, broken by index
    pruner = PruningScheduler(point_weights(values), "budget", keep=0.3, score_epochs=2)
    assert pruner.scoring
    assert not pruner.step()["decided"] and pruner.scoring
    row = pruner.step()
    assert row["decided"] and not pruner.scoring
    kept = pruner.active_indices()
    assert len(kept) == math.floor(0.3 * N)
    expected = np.lexsort((np.arange(N), values))[N - len(kept):]
    assert sorted(kept.tolist()) == sorted(expected.tolist())
    for _ in range(3):  # no more decisions: plain training on what is kept
        assert not pruner.step()["decided"]
    assert np.array_equal(pruner.active_indices(), kept)


def test_budget_needs_a_scoring_phase_and_is_hard():
    w = point_weights(np.full(N, 0.5))
    with pytest.raises(ValueError, match="score_epochs"):
        PruningScheduler(w, "budget", keep=0.5)
    with pytest.raises(ValueError, match="soft"):
        PruningScheduler(w, "budget", keep=0.5, score_epochs=1, soft=True, total_epochs=4)


def test_lowest_rule_prunes_the_matched_counts_lowest_first():
    values = np.linspace(0, 1, N)[::-1].copy()
    pruner = PruningScheduler(point_weights(values), "lowest", control=[0, 7, 5])
    counts = [pruner.step()["decided_count"] for _ in range(4)]
    assert counts == [0, 7, 5, 0]
    assert np.flatnonzero(pruner.pruned).tolist() == list(range(N - 12, N))


def test_score_epochs_ends_scoring_for_any_rule():
    pruner = PruningScheduler(point_weights(np.full(N, 0.5)), "random", control=[0, 3],
                              score_epochs=1)
    assert pruner.scoring
    pruner.step()
    assert not pruner.scoring


@pytest.mark.parametrize("kw", [
    {"epsilon": 1.5}, {"epsilon": -0.1}, {"epsilon": math.nan}, {"epsilon": math.inf},
    {"delta": math.nan}, {"quantile": 1.0}, {"keep": 0.0}, {"keep": 1.5},
    {"max_fraction": math.nan}, {"warmup": -1}, {"every": 0}, {"every": 1.5},
    {"seed": -2}, {"score_epochs": 0}, {"control": [1, -2]}, {"control": [1.5]},
    {"epsilon": True}])
def test_every_argument_is_checked_in_the_constructor(kw):
    with pytest.raises(ValueError):
        PruningScheduler(point_weights(np.full(N, 0.5)), "cdf", **kw)


def test_a_state_saved_before_budget_options_existed_still_loads():
    w = point_weights(np.full(N, 0.5))
    state = PruningScheduler(w, "cdf").state_dict()
    del state["config"]["keep"], state["config"]["score_epochs"]
    PruningScheduler(w, "cdf").load_state_dict(state)
