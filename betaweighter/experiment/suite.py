"""``betaweighter suite``: every model of a suite file on every task, resumably, then one table.

Each cell (model x task) is evaluated on its own and written atomically to
``cells/<model>/<task>.json`` in the output folder the moment it finishes. A cell whose
file is there and whose recorded definitions match is never computed again, so a killed
run resumes with the cells that are missing, and changing one task (or one model)
recomputes only its column (or row). A definition is its resolved form: for a task, the
protocol and every option with its default filled in (the headline is read from the
stored result, so changing it recomputes nothing); for a model, the
checkpoint file's path, content digest, format and architecture.

Detection and instance segmentation build on a ResNet trunk; for a model without one
(this library's conv net) such a cell is recorded as not applicable, with the reason,
and left out of that task's ranks. Any other error (a missing dataset, a bad checkpoint)
stops the run with its one-line message; the cells finished before it stay. The table,
ranks, heat map and rank correlations (`betaweighter.experiment.suite_report`) are rebuilt
from the cell files at the end of every run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch
import torchvision
from tqdm.auto import tqdm

from betaweighter.checkpoint import resolve_checkpoint
from betaweighter.errors import ConfigError
from betaweighter.evaluate.detection import resnet_trunk
from betaweighter.experiment.evaluation import check_task, run_task
from betaweighter.experiment.rundir import RunDir
from betaweighter.experiment.suite_report import SuiteReport, write_report
from betaweighter.experiment.suite_spec import Suite, SuiteModel, SuiteTask, load_suite
from betaweighter.io import write_json
from betaweighter.models import Backbone, load_backbone
from betaweighter.runtime import progress_disabled, resolve_device

__all__ = ["SuiteRun", "cell_path", "run_suite"]

#: Protocols that need a torchvision ResNet trunk (their heads read its stages).
TRUNK_PROTOCOLS = ("detection", "instance_segmentation")


@dataclass
class SuiteRun:
    """What `run_suite` did: the cells it computed and reused, and the report."""

    suite: Suite
    output: Path
    computed: list[tuple[str, str]] = field(default_factory=list)
    reused: list[tuple[str, str]] = field(default_factory=list)
    report: SuiteReport | None = None


def cell_path(output: str | Path, model: str, task: str) -> Path:
    """Where the cell (`model`, `task`) of a suite's output folder is stored."""
    return Path(output) / "cells" / model / f"{task}.json"


def run_suite(suite: str | Path | Suite, output: str | Path | None = None,
              device: str | torch.device | None = None) -> SuiteRun:
    """Compute every missing cell of `suite` (a suite file or a loaded `Suite`) in
    `output` (default: the suite's own), then write the table, ranks, heat map and
    correlations there. Holds the folder's lock while it writes."""
    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    out = Path(output).expanduser().resolve() if output is not None else suite.output
    for i, task in enumerate(suite.tasks):
        try:
            check_task(task.protocol, task.options)
        except ConfigError as e:
            raise ConfigError(str(e).replace(f"evaluate.{task.protocol}",
                                             f"tasks[{i}].{task.protocol}")) from None
    device = resolve_device(device if device is not None else suite.device, key="--device")
    out.mkdir(parents=True, exist_ok=True)
    run = SuiteRun(suite, out)
    with RunDir(out, check=False).lock():
        write_json(out / "suite.json", _definitions(suite))
        model_keys = {m.name: _model_key(m) for m in suite.models}
        task_keys = {t.name: t.key() for t in suite.tasks}
        todo: dict[str, list[SuiteTask]] = {}
        for m in suite.models:
            for t in suite.tasks:
                if _finished(cell_path(out, m.name, t.name), model_keys[m.name],
                             task_keys[t.name]):
                    run.reused.append((m.name, t.name))
                else:
                    todo.setdefault(m.name, []).append(t)
        cells = len(suite.models) * len(suite.tasks)
        with tqdm(total=cells, initial=len(run.reused), desc="suite cells", unit="cell",
                  disable=progress_disabled()) as bar:
            for m in suite.models:
                if m.name not in todo:
                    continue
                model = _load(m, device)
                for t in todo[m.name]:
                    bar.set_postfix_str(f"{m.name} x {t.name}")
                    payload = _evaluate_cell(model, m, t, out, device)
                    payload.update(model_key=model_keys[m.name], task_key=task_keys[t.name])
                    write_json(cell_path(out, m.name, t.name), payload)
                    run.computed.append((m.name, t.name))
                    bar.update(1)
                del model
        values: dict[tuple[str, str], float | None] = {}
        skipped: dict[tuple[str, str], str] = {}
        for m in suite.models:
            for t in suite.tasks:
                cell = _read(cell_path(out, m.name, t.name)) or {}
                if cell.get("skipped"):
                    skipped[m.name, t.name] = cell["skipped"]
                    values[m.name, t.name] = None
                else:
                    values[m.name, t.name] = _headline(cell.get("result"), t)
        run.report = write_report(out, suite, values, skipped)
    return run


def _load(m: SuiteModel, device: torch.device) -> Backbone:
    extra = {k: getattr(m, k) for k in ("format", "arch") if getattr(m, k) is not None}
    return load_backbone(m.path, device, **extra)


def _evaluate_cell(model: Backbone, m: SuiteModel, t: SuiteTask, out: Path,
                   device: torch.device) -> dict[str, Any]:
    checkpoint = resolve_checkpoint(m.path)
    payload: dict[str, Any] = {
        "model": m.name, "task": t.name, "protocol": t.protocol,
        "checkpoint": str(checkpoint), "source": getattr(model, "source", None),
        "device": str(device),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "scikit-learn": sklearn.__version__, "numpy": np.__version__}}
    if t.protocol in TRUNK_PROTOCOLS:
        try:
            resnet_trunk(model)
        except TypeError as e:
            return {**payload, "skipped": f"not applicable: {e}", "result": None,
                    "config": t.options, "seconds": 0.0}
    options = copy.deepcopy(t.options)
    start = time.perf_counter()
    result = run_task(model, t.protocol, options, out, device, checkpoint)
    return {**payload, "skipped": None, "result": result, "config": options,
            "seconds": time.perf_counter() - start}


def _headline(result: Any, t: SuiteTask) -> float | None:
    """The number at `t.headline` in a cell's result (None where it is undefined). Read
    from the stored result, so a changed headline recomputes nothing."""
    node: Any = result
    for part in t.headline.split("/"):
        if not isinstance(node, dict) or part not in node:
            there = sorted(node) if isinstance(node, dict) else node
            raise ConfigError(f"task {t.name!r}: its result has no {t.headline!r} (at "
                              f"{part!r}; there: {there!r}); set the task's headline to "
                              "one of its numbers")
        node = node[part]
    if node is None:
        return None
    if isinstance(node, bool) or not isinstance(node, (int, float, np.number)):
        raise ConfigError(f"task {t.name!r}: headline {t.headline!r} is {node!r}, not a "
                          "number; set the task's headline to one of its numbers")
    value = float(node)
    return value if np.isfinite(value) else None


def _model_key(m: SuiteModel) -> str:
    path = resolve_checkpoint(m.path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    text = json.dumps({"checkpoint": str(path), "sha256": digest.hexdigest(),
                       "format": m.format, "arch": m.arch}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read(path: Path) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _finished(path: Path, model_key: str, task_key: str) -> bool:
    payload = _read(path)
    return (payload is not None and payload.get("model_key") == model_key
            and payload.get("task_key") == task_key)


def _definitions(suite: Suite) -> dict[str, Any]:
    return {"suite": str(suite.path),
            "models": [vars(m) for m in suite.models],
            "tasks": [{"name": t.name, "protocol": t.protocol, "headline": t.headline,
                       "options": t.options} for t in suite.tasks]}
