"""`compare`: the three variants per seed, matched counts, the table and its intervals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers import TINY
from scipy import stats

from betaweighter.cli import main
from betaweighter.errors import ConfigError
from betaweighter.experiment.compare import compare, confidence_interval, verdict
from betaweighter.experiment.config import load_config
from betaweighter.experiment.rundir import RunDir


def test_confidence_interval_is_students_t():
    mean, half = confidence_interval([1.0, 2.0, 4.0, float("nan")])
    assert mean == pytest.approx(7 / 3)
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * np.std([1, 2, 4], ddof=1) / math.sqrt(3))
    assert math.isnan(confidence_interval([3.0])[1])
    assert math.isnan(confidence_interval([])[0])


def test_compare_runs_every_variant_with_matched_counts(tmp_path, capsys):
    cfg = load_config(overrides=TINY + ["train.epochs=2", "experiment.name=tiny"])
    result = compare(cfg, seeds=[0, 1], out=tmp_path, variants=["rotnet", "bdw", "random"])
    assert [r["variant"] for r in result.table] == ["rotnet", "bdw", "random"]
    for variant in ("rotnet", "bdw", "random"):
        assert [r["seed"] for r in result.runs[variant]] == [0, 1]
    for bdw, rnd in zip(result.runs["bdw"], result.runs["random"]):
        a, b = RunDir(bdw["run_dir"]).metrics(), RunDir(rnd["run_dir"]).metrics()
        assert [r["decided"] for r in a] == [r["decided"] for r in b]  # epoch by epoch
        assert sum(int(r["decided"]) for r in a) > 0
        assert RunDir(rnd["run_dir"]).config().pruning.rule == "random"
    baseline = result.runs["rotnet"]
    assert all(RunDir(r["run_dir"]).config().weights.method == "rotnet" for r in baseline)
    row = next(r for r in result.table if r["variant"] == "bdw")
    accs = [r["summary"]["test_accuracy"] for r in result.runs["bdw"]]
    assert row["test_accuracy"] == pytest.approx(confidence_interval(accs))
    saved = json.loads((result.directory / "compare.json").read_text())
    assert saved["seeds"] == [0, 1] and len(saved["table"]) == 3
    assert (result.directory / "compare.png").is_file()
    assert sorted(p.name for p in result.directory.iterdir() if p.is_dir()) == [
        "bdw-s0", "bdw-s1", "random-s0", "random-s1", "rotnet-s0", "rotnet-s1"]
    assert (result.directory / "compare.csv").read_text().startswith("variant,test_accuracy_")
    assert "weights + pruning" not in result.format() and "bdw" in result.format()


def test_nn_and_shuffled_controls_match_the_weighted_run(tmp_path):
    cfg = load_config(overrides=TINY + [
        "train.epochs=2", "experiment.name=budget", "weights.method=cluster",
        "data.name=mixture", "data.options={shapes_per_class: 24}",
        "weights.options={clusters: 4}", "meta.normalise=true", "pruning.rule=budget",
        "pruning.keep=0.6", "pruning.score_epochs=1"])
    result = compare(cfg, seeds=[0], out=tmp_path)
    assert [r["variant"] for r in result.table] == ["rotnet", "bdw", "random", "nn",
                                                    "shuffled"]
    runs = {v: RunDir(result.runs[v][0]["run_dir"]) for v in result.runs}
    decided = {v: [r["decided"] for r in runs[v].metrics()] for v in runs if v != "rotnet"}
    assert len(set(map(tuple, decided.values()))) == 1 and int(decided["bdw"][0]) > 0
    nn = runs["nn"].config()
    assert nn.weights.method == "nn" and nn.pruning.rule == "lowest"
    assert nn.weights.options == {} and nn.pruning.score_epochs == 1
    assert runs["shuffled"].config().meta.shuffle_meta_gradients
    assert runs["rotnet"].config().weights.options == {}
    text = verdict(result)
    for label in ("baseline", "random pruning", "NN-Weighter", "shuffled", "time:"):
        assert label in text
    assert "one seed" in text  # no interval, and it says so
    kinds = result.table[1]["by_kind"]  # the mixture's kinds: what was pruned, per kind
    assert {"auroc_digits", "pruned_shapes", "pruned_noise"} <= set(kinds)
    assert "by kind" in result.format() and "AUROC digits" in result.format()
    assert result.table[1]["final_test_accuracy"][0] == \
        result.runs["bdw"][0]["summary"]["final_test_accuracy"]


def test_verdict_says_worse_when_the_intervals_are_apart():
    from betaweighter.experiment.compare import CompareResult

    def row(variant, acc, seconds):
        return {"variant": variant, "final_test_accuracy": (acc, 0.01),
                "train_seconds": (seconds, 1.0), "kept_fraction": (0.5, 0.0)}

    result = CompareResult(directory=None, seeds=[0, 1, 2],
                           table=[row("rotnet", 0.9, 10.0), row("bdw", 0.8, 7.0),
                                  row("random", 0.79, 7.0)])
    text = verdict(result)
    assert "baseline (no weights, no pruning): WORSE (80.0 vs 90.0" in text
    assert "random pruning (matched counts): no clear difference" in text
    assert "0.70x the baseline's training time" in text


def test_compare_refuses_a_config_without_pruning(tmp_path, capsys):
    with pytest.raises(ConfigError, match="pruning.enabled=true"):
        compare(load_config(overrides=TINY + ["pruning.enabled=false"]), out=tmp_path)
    assert main(["compare", "demo", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
