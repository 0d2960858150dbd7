"""`betaweighter suite`: every cell once, resumable after a kill, only changed definitions
recomputed, the table, ranks and correlations against an independent computation, and
one-line errors for a bad suite file."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from ondisk import write_checkpoint
from ondisk_transfer import DTD_CLASSES, write_cifar10, write_dtd
from PIL import Image

import betaweighter.experiment.suite as suite_module
from betaweighter.cli import main
from betaweighter.errors import ConfigError
from betaweighter.experiment.evaluation import evaluate_checkpoint, run_task
from betaweighter.experiment.suite import cell_path, run_suite
from betaweighter.experiment.suite_spec import load_suite

CONVNET = {"name": "convnet", "num_classes": 4, "width": 8, "blocks": 2}
MODELS = ("a", "b", "c")


def _noisy_folders(root, per_class, seed):
    """Three classes a random conv net separates only partly: close colours, much noise."""
    rng = np.random.default_rng(seed)
    for label, colour in enumerate([(120, 110, 100), (105, 120, 110), (110, 100, 125)]):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.asarray(colour) + rng.normal(0, 45, size=(16, 16, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data, three tiny conv net checkpoints and the task definitions, written once."""
    root = tmp_path_factory.mktemp("suite")
    _noisy_folders(root / "data" / "train", 10, 1)
    _noisy_folders(root / "data" / "test", 6, 2)
    write_cifar10(root / "cifar", train=30, test=20, noise=60.0)
    for i, name in enumerate(MODELS):
        write_checkpoint(root / "models" / f"{name}.pt", CONVNET, seed=10 + i)
    tasks = [
        {"name": "folders", "linear": {
            "image_size": 16, "batch_size": 16, "c_values": [0.01, 1.0],
            "data": {"train": "data/train", "test": "data/test"}}},
        {"name": "cifar-fs", "fewshot": {
            "image_size": 16, "way": 3, "shot": 2, "query": 3, "episodes": 20,
            "data": {"dataset": "CIFAR10", "root": "cifar"}}},
        {"name": "voc-det", "detection": {
            "images": 2, "data": {"train": {"format": "voc", "root": "voc"},
                                  "test": {"format": "voc", "root": "voc", "split": "test"}}}},
    ]
    return root, tasks


def _suite(root, tasks, models=MODELS, name="suite.yaml", **top):
    doc = {"models": [{"name": m, "path": f"models/{m}.pt"} for m in models],
           "tasks": tasks, **top}
    path = root / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _counting(monkeypatch, fail_at=None):
    """Count the evaluations run_suite makes; raise KeyboardInterrupt instead of the
    evaluation number `fail_at` (0-based), as a kill would stop it there."""
    calls = []
    real = run_task

    def counted(model, protocol, options, *args, **kwargs):
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        calls.append(protocol)
        return real(model, protocol, options, *args, **kwargs)

    monkeypatch.setattr(suite_module, "run_task", counted)
    return calls


def _ranks(column):
    """1 = highest; ties share the mean of their places (written out, not scipy)."""
    out = []
    for v in column:
        higher = sum(w > v for w in column)
        ties = sum(w == v for w in column)
        out.append(higher + (ties + 1) / 2)
    return out


def test_full_flow_table_ranks_and_correlations(world, monkeypatch, capsys):
    root, tasks = world
    monkeypatch.chdir(root.parent)  # relative paths are the suite file's, not the cwd's
    calls = _counting(monkeypatch)
    assert main(["suite", str(_suite(root, tasks)), "--out", str(root / "out"), "--device",
                 "cpu"]) == 0
    assert calls == ["linear", "fewshot"] * 3  # detection is not applicable to a conv net
    printed = capsys.readouterr()
    assert "cells: 9 computed, 0 reused" in printed.err  # 3 of them "not applicable"
    out = root / "out"
    # independent values: the same task run by `betaweighter evaluate`'s path
    cfg = root / "linear.yaml"
    cfg.write_text(yaml.safe_dump({"evaluate": {"linear": {
        "image_size": 16, "batch_size": 16, "c_values": [0.01, 1.0],
        "data": {"train": str(root / "data/train"), "test": str(root / "data/test")}}}}))
    linear = [evaluate_checkpoint(root / "models" / f"{m}.pt", "linear", cfg,
                                  device="cpu")["result"]["top1"] for m in MODELS]
    fewshot = [json.loads(cell_path(out, m, "cifar-fs").read_text())["result"]["accuracy"]
               for m in MODELS]
    with open(out / "results.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["model", "folders", "cifar-fs", "voc-det"]
    assert [r[0] for r in rows[1:]] == list(MODELS)
    assert [float(r[1]) for r in rows[1:]] == linear
    assert [float(r[2]) for r in rows[1:]] == fewshot and all(r[3] == "" for r in rows[1:])
    saved = json.loads((out / "results.json").read_text())
    assert [saved["values"][m]["folders"] for m in MODELS] == linear
    assert set(saved["not_applicable"]) == set(MODELS)
    assert "not applicable" in saved["not_applicable"]["a"]["voc-det"]
    ranks_linear, ranks_fewshot = _ranks(linear), _ranks(fewshot)
    assert [saved["ranks"][m]["folders"] for m in MODELS] == ranks_linear
    assert [saved["ranks"][m]["cifar-fs"] for m in MODELS] == ranks_fewshot
    assert all(saved["ranks"][m]["voc-det"] is None for m in MODELS)
    means = [(x + y) / 2 for x, y in zip(ranks_linear, ranks_fewshot)]
    assert [saved["mean_rank"][m] for m in MODELS] == pytest.approx(means)
    pair = next(c for c in saved["correlations"] if {c["task_a"], c["task_b"]} == {
        "folders", "cifar-fs"})
    assert len(set(linear)) > 1 and len(set(fewshot)) > 1  # the data separate the models
    assert pair["pearson"] == pytest.approx(np.corrcoef(linear, fewshot)[0, 1])
    assert pair["spearman"] == pytest.approx(np.corrcoef(ranks_linear, ranks_fewshot)[0, 1])
    with_det = [c for c in saved["correlations"] if "voc-det" in (c["task_a"], c["task_b"])]
    assert all(c["spearman"] is None and c["n"] == 0 for c in with_det)
    # the ranked table, best mean rank first; the heat map is a PNG
    lines = (out / "ranks.md").read_text().splitlines()
    placed = [line.split(" | ")[1] for line in lines[2:]]
    assert placed == sorted(MODELS, key=lambda m: (means[MODELS.index(m)],
                                                   MODELS.index(m)))
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert lines[0] in printed.out
    assert "nan" not in (out / "results.json").read_text().lower()


def test_a_killed_run_resumes_without_recomputing(world, monkeypatch):
    root, tasks = world
    suite = _suite(root, tasks[:2], name="resume.yaml")
    cells = len(MODELS) * 2
    kill_at = int(np.random.default_rng().integers(1, cells))  # a random cell
    _counting(monkeypatch, fail_at=kill_at)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, root / "killed", "cpu")
    done = sorted(p for p in (root / "killed" / "cells").rglob("*.json"))
    assert len(done) == kill_at, f"killed at cell {kill_at}"
    before = {p: p.read_bytes() for p in done}
    calls = _counting(monkeypatch)
    run = run_suite(suite, root / "killed", "cpu")
    assert len(calls) == cells - kill_at and len(run.reused) == kill_at
    assert all(p.read_bytes() == b for p, b in before.items())  # finished cells untouched
    assert not list((root / "killed").rglob(".*.tmp"))
    calls = _counting(monkeypatch)
    whole = run_suite(suite, root / "whole", "cpu")
    assert len(calls) == cells
    assert (json.loads((root / "killed" / "results.json").read_text())
            == json.loads((root / "whole" / "results.json").read_text()))
    assert np.array_equal(run.report.values, whole.report.values)


def test_a_changed_definition_recomputes_only_its_cells(world, monkeypatch):
    root, tasks = world
    tasks = [{k: dict(v) if isinstance(v, dict) else v for k, v in t.items()}
             for t in tasks[:2]]
    out = root / "changes"
    run_suite(_suite(root, tasks, name="changes.yaml"), out, "cpu")
    calls = _counting(monkeypatch)
    assert run_suite(_suite(root, tasks, name="changes.yaml"), out, "cpu").computed == []
    tasks[0]["linear"]["c_values"] = [0.1, 10.0]  # the linear task changes: its column only
    run = run_suite(_suite(root, tasks, name="changes.yaml"), out, "cpu")
    assert run.computed == [(m, "folders") for m in MODELS] and calls == ["linear"] * 3
    assert json.loads(cell_path(out, "b", "folders").read_text())["config"]["c_values"] == [
        0.1, 10.0]
    tasks[1]["headline"] = "ci95"  # another number of the stored result: nothing to run
    run = run_suite(_suite(root, tasks, name="changes.yaml"), out, "cpu")
    assert run.computed == []
    assert list(run.report.values[:, 1]) == [json.loads(cell_path(out, m, "cifar-fs")
                                                        .read_text())["result"]["ci95"]
                                             for m in MODELS]
    write_checkpoint(root / "models" / "b2.pt", CONVNET, seed=99)  # model b is retrained
    (root / "models" / "b2.pt").replace(root / "models" / "b.pt")
    calls.clear()
    run = run_suite(_suite(root, tasks, name="changes.yaml"), out, "cpu")
    assert run.computed == [("b", "folders"), ("b", "cifar-fs")]


def test_fewer_than_three_models_have_no_correlations(world, capsys):
    root, tasks = world
    suite = _suite(root, tasks[:2], models=("a", "b"), name="two.yaml")
    assert main(["suite", str(suite), "--out", str(root / "two"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "undefined with fewer than 3 models (2 in this suite)" in printed
    saved = json.loads((root / "two" / "results.json").read_text())
    assert saved["correlations"][0]["spearman"] is None and saved["correlations_note"]
    assert "nan" not in printed.lower() + (root / "two" / "correlations.csv").read_text()


def _fails(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_suite(path)
    assert "\n" not in str(e.value)


LINEAR = "{name: t, linear: {data: {train: tr, test: te}}}"


def test_strict_suite_files(tmp_path, capsys):
    fails = lambda text, match: _fails(tmp_path, text, match)  # noqa: E731
    model = "models: [{name: m, path: m.pt}]\n"
    fails(model + f"tasks: [{LINEAR}]\nouput: x\n", r"unknown config key 'ouput'.*models, "
                                                    "tasks, output, device")
    fails(f"models: [{{name: m, path: m.pt, fromat: moco}}]\ntasks: [{LINEAR}]\n",
          r"unknown config key 'models\[0\].fromat'")
    fails(model + "tasks: [{name: t, linear: {c_value: [1.0]}}]\n",
          r"unknown config key 'tasks\[0\].linear.c_value'; allowed keys in section "
          r"'tasks\[0\].linear': batch_size")
    fails(model + "tasks: [{name: t, linear: {data: {train: a, folder: b}}}]\n",
          r"unknown config key 'tasks\[0\].linear.data.folder'")
    fails(model + "tasks: [{name: t, linear: {data: {dataset: ImageNet}}}]\n",
          r"'tasks\[0\].linear.data.dataset': expected one of 'FGVCAircraft'")
    fails(model + "tasks: [{name: t, probe: {}}]\n",
          r"unknown config key 'tasks\[0\].probe'; allowed keys in section 'tasks\[0\]': "
          r"name, headline, and one of linear, fewshot")
    fails(model + "tasks: [{name: t, invariance: {}}]\n", r"'tasks\[0\].invariance'")
    fails(model + "tasks: [{name: t, linear: {}, fewshot: {}}]\n",
          r"exactly one protocol section.*\['linear', 'fewshot'\]")
    fails(model + f"tasks: [{LINEAR}, {LINEAR}]\n", r"the names \['t'\] are used twice")
    fails(f"models: [{{name: m}}]\ntasks: [{LINEAR}]\n", r"'models\[0\].path' is required")
    fails(f"models: [{{name: 'a/b', path: m.pt}}]\ntasks: [{LINEAR}]\n",
          r"'models\[0\].name': a name of letters")
    fails(f"models: [{{name: m, path: m.pt, format: mocov9}}]\ntasks: [{LINEAR}]\n",
          r"'models\[0\].format': unknown format 'mocov9'")
    fails(model + "tasks: [{name: t, detection: {fractions: [2.0]}}]\n",
          r"config key 'tasks\[0\].detection.fractions")
    fails(model + "tasks: [{name: t, detection: {anchor_sizes: [32]}}]\n",
          r"config key 'tasks\[0\].detection.anchor_sizes'")  # a check across values
    fails(model + "tasks: []\n", r"suite key 'tasks': list at least one")
    fails(model + "models: []\n", r"duplicate key 'models'")
    # relative paths are relative to the suite file
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "s.yaml").write_text(
        "models: [{name: m, path: ../m.pt}]\ntasks: [{name: t, linear: "
        "{data: {dataset: DTD, root: data}}}]\n")
    loaded = load_suite(tmp_path / "sub" / "s.yaml")
    assert loaded.models[0].path == str(tmp_path / "m.pt")
    assert loaded.tasks[0].options["data"]["root"] == str(tmp_path / "sub" / "data")
    assert loaded.output == tmp_path / "sub" / "s-results"
    # run-time checks of the data, and the command line's one line and status 2
    write_checkpoint(tmp_path / "m.pt", CONVNET)
    (tmp_path / "sub" / "s.yaml").write_text(
        "models: [{name: m, path: ../m.pt}]\ntasks: [{name: t, linear: "
        "{data: {dataset: DTD, train: tr}}}]\n")
    assert main(["suite", str(tmp_path / "sub" / "s.yaml"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'tasks[0].linear.data'" in err and "dataset and root" in err
    (tmp_path / "sub" / "s.yaml").write_text(
        "models: [{name: m, path: ../m.pt}]\ntasks: [{name: t, linear: "
        "{data: {dataset: DTD, root: nothing-here}}}]\n")
    assert main(["suite", str(tmp_path / "sub" / "s.yaml"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path / "sub" / "nothing-here" / "dtd") in err
    assert "Nothing is downloaded" in err


def test_headline_must_name_a_number(world):
    root, tasks = world
    bad = [dict(tasks[0], headline="calibration/no_such_key")]
    with pytest.raises(ConfigError, match="has no 'calibration/no_such_key'"):
        run_suite(_suite(root, bad, models=("a",), name="headline.yaml"), root / "h", "cpu")
    assert cell_path(root / "h", "a", "folders").is_file()  # the result is kept


def test_the_example_suite_reads():
    example = Path(__file__).resolve().parents[2] / "examples" / "transfer_suite.yaml"
    suite = load_suite(example)
    assert [m.name for m in suite.models][:2] == ["supervised", "moco-v2"]
    assert {t.protocol for t in suite.tasks} == {"linear", "fewshot", "detection",
                                                 "segmentation"}
    dtd = next(t for t in suite.tasks if t.name == "dtd")
    assert dtd.options["data"]["root"] == str(example.parent / "data")
    assert suite.output == example.parent / "transfer-suite-results"


def test_evaluate_reads_a_torchvision_dataset(tmp_path):
    write_dtd(tmp_path / "data")
    ckpt = write_checkpoint(tmp_path / "m.pt", CONVNET)
    cfg = tmp_path / "dtd.yaml"
    cfg.write_text("evaluate:\n  linear:\n    data: {dataset: DTD, root: data}\n"
                   "    image_size: 16\n    c_values: [1.0]\n")
    result = evaluate_checkpoint(ckpt, "linear", cfg, device="cpu")["result"]
    assert result["classes"] == sorted(DTD_CLASSES) and result["data"]["dataset"] == "DTD"
    assert [result["data"][f"{s}_images"] for s in ("train", "val", "test")] == [12, 6, 9]
    assert result["n_test"] == 9
