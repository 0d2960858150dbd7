"""`betaweighter suite` end to end on the CPU: 3 models x 4 tasks on tiny generated data,
then the same suite killed at a random cell and resumed.

    python benchmarks/suite_cpu.py [--out DIR] [--seed N] [--demo-model resnet18|convnet]

Models (random or briefly trained weights: nothing is downloaded):

* ``demo``: this library's checkpoint from the shipped ``demo`` recipe (rotation
  pre-training with cluster weights on the mixture pool), cut to one epoch;
  ``--demo-model`` sets its architecture (a ResNet-18 by default, so
  that detection applies; ``convnet`` is the demo's own and makes its detection cell "not
  applicable");
* ``torchvision``: a plain torchvision ResNet-18 state dict (``torch.save(net.state_dict())``);
* ``moco``: a ResNet-18 in MoCo v2's release layout (``state_dict`` under
  ``module.encoder_q.``, its MLP head, the key encoder and the queue beside it).

Tasks, on data generated here in the real on-disk layouts: a linear probe and 3-way
few-shot episodes on an ImageFolder of drawn shapes; semantic segmentation (FCN head,
fine-tuned) on an image/mask folder pair; Faster R-CNN detection on a Pascal VOC directory
of shapes scenes (`betaweighter.data.write_shapes_voc`).

Prints one JSON line per case: ``generate`` (data and models), ``full`` (the suite from
nothing, every cell computed), ``killed_and_resumed`` (the suite in a new folder, killed
with SIGKILL once a random number of cells has finished, then run again: how many cells
the second run reused and computed, whether the finished cells' files are unchanged, and
whether its table equals the full run's, and which cells differ: a cell computed in both
runs differs only if its evaluator is not deterministic).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
import yaml
from PIL import Image, ImageDraw

from betaweighter.data import write_shapes_voc

CLASSES = ("circle", "square", "triangle")
SIZE = 32


def _draw(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int],
          fill: int | tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def write_shape_folders(root: Path, per_class: int, seed: int) -> Path:
    """An ImageFolder (one sub-folder per shape) of noisy 32 px drawn shapes."""
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.fromarray(rng.integers(0, 90, (SIZE, SIZE, 3), dtype=np.uint8))
            side = int(rng.integers(12, 24))
            x, y = (int(v) for v in rng.integers(0, SIZE - side, 2))
            colour = tuple(int(c) for c in rng.integers(120, 256, 3))
            _draw(ImageDraw.Draw(image), kind, (x, y, x + side, y + side), colour)
            image.save(root / kind / f"{i:03d}.png")
    return root


def write_mask_folder(root: Path, images: int, seed: int) -> Path:
    """``images/<name>.png`` and ``masks/<name>.png`` (0 background, k+1 = CLASSES[k])."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        image = Image.fromarray(rng.integers(0, 90, (48, 48, 3), dtype=np.uint8))
        mask = Image.new("L", (48, 48), 0)
        for _ in range(2):
            k = int(rng.integers(len(CLASSES)))
            side = int(rng.integers(12, 24))
            x, y = (int(v) for v in rng.integers(0, 48 - side, 2))
            box = (x, y, x + side, y + side)
            _draw(ImageDraw.Draw(image), CLASSES[k], box,
                  tuple(int(c) for c in rng.integers(120, 256, 3)))
            _draw(ImageDraw.Draw(mask), CLASSES[k], box, k + 1)
        image.save(root / "images" / f"{i:03d}.png")
        mask.save(root / "masks" / f"{i:03d}.png")
    return root


def write_models(root: Path, demo_model: str, demo_steps: int) -> dict[str, Path]:
    """The three checkpoints (see the module docstring)."""
    models = {}
    demo = root / "demo-run"
    steps = ["--set", f"train.max_steps_per_epoch={demo_steps}"] if demo_steps else []
    subprocess.run([sys.executable, "-m", "betaweighter", "run", "demo", "--out", str(demo),
                    "--device", "cpu", "--set", "train.epochs=1", "--set",
                    "pruning.score_epochs=1", "--set", f"model.name={demo_model}", "--set",
                    "experiment.name=demo", *steps], check=True, stdout=subprocess.DEVNULL)
    models["demo"] = demo / "demo"
    torch.manual_seed(1)
    models["torchvision"] = root / "resnet18_torchvision.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), models["torchvision"])
    torch.manual_seed(2)
    trunk = {k: v for k, v in torchvision.models.resnet18(weights=None).state_dict().items()
             if not k.startswith("fc.")}
    state = {**{f"module.encoder_q.{k}": v for k, v in trunk.items()},
             **{f"module.encoder_k.{k}": v.clone() for k, v in trunk.items()},
             "module.encoder_q.fc.0.weight": torch.randn(512, 512),
             "module.encoder_q.fc.0.bias": torch.zeros(512),
             "module.encoder_q.fc.2.weight": torch.randn(128, 512),
             "module.encoder_q.fc.2.bias": torch.zeros(128),
             "module.queue": torch.randn(128, 256),
             "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    models["moco"] = root / "moco_v2_resnet18.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state}, models["moco"])
    return models


def write_suite(root: Path, models: dict[str, Path]) -> Path:
    data = root / "data"
    write_shape_folders(data / "shapes" / "train", 16, 1)
    write_shape_folders(data / "shapes" / "test", 8, 2)
    write_mask_folder(data / "masks" / "train", 16, 3)
    write_mask_folder(data / "masks" / "test", 8, 4)
    voc = data / "VOC2007"
    write_shapes_voc(voc, images=8, size=64, seed=5, split="trainval")
    write_shapes_voc(voc, images=4, size=64, seed=6, split="test", start=8)
    inputs = {"image_size": SIZE, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    suite = {
        "models": [{"name": name, "path": str(path.relative_to(root))}
                   for name, path in models.items()],
        "tasks": [
            {"name": "shapes-linear", "linear": {
                **inputs, "c_values": [0.01, 0.1, 1.0, 10.0],
                "data": {"train": "data/shapes/train", "test": "data/shapes/test"}}},
            {"name": "shapes-3way", "fewshot": {
                **inputs, "way": 3, "shot": 5, "query": 5, "episodes": 100,
                "data": {"train": "data/shapes/train", "test": "data/shapes/test"}}},
            {"name": "masks-fcn", "segmentation": {
                **inputs, "images": 64, "batch_size": 8, "test_size": 48,
                "data": {"format": "folders", "train": "data/masks/train",
                         "test": "data/masks/test",
                         "classes": ["background", *CLASSES]}}},
            {"name": "voc-det", "detection": {
                "mean": inputs["mean"], "std": inputs["std"], "images": 16, "batch_size": 2,
                "min_size": [64], "max_size": 96, "trainable_layers": 1, "warmup_images": 4,
                "data": {"train": {"format": "voc", "root": "data/VOC2007",
                                   "split": "trainval"},
                         "test": {"format": "voc", "root": "data/VOC2007", "split": "test"}}}},
        ]}
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def run(suite: Path, out: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "betaweighter", "suite", str(suite), "--out",
                           str(out), "--device", "cpu"], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"suite failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - start, done.stderr


def counts(stderr: str) -> tuple[int, int]:
    m = re.search(r"cells: (\d+) computed, (\d+) reused", stderr)
    return int(m.group(1)), int(m.group(2))


def cell_files(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted((out / "cells").rglob("*.json"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="work folder (default: a temporary one)")
    p.add_argument("--seed", type=int, default=None, help="picks the cell to kill at")
    p.add_argument("--demo-model", default="resnet18", choices=["resnet18", "convnet"])
    p.add_argument("--demo-steps", type=int, default=0,
                   help="cap the demo's one epoch at this many steps (default 0: the whole "
                        "epoch, about 37 steps; far fewer leave its BatchNorm statistics "
                        "unsettled and its detection diverges)")
    args = p.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="suite-cpu-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    suite = write_suite(root, write_models(root, args.demo_model, args.demo_steps))
    print(json.dumps({"case": "generate", "seconds": round(time.perf_counter() - start, 1),
                      "folder": str(root), "torch_threads": torch.get_num_threads()}),
          flush=True)

    seconds, err = run(suite, root / "full")
    computed, reused = counts(err)
    results = json.loads((root / "full" / "results.json").read_text())
    cells = {f"{c['model']} x {c['task']}": round(c["seconds"], 1)
             for c in map(json.loads, cell_files(root / "full").values())}
    print(json.dumps({"case": "full", "cells": len(cells), "computed": computed,
                      "reused": reused, "seconds": round(seconds, 1), "cell_seconds": cells,
                      "values": results["values"], "mean_rank": results["mean_rank"],
                      "not_applicable": results["not_applicable"]}), flush=True)

    rng = np.random.default_rng(args.seed)
    kill_after = int(rng.integers(1, len(cells)))  # a random cell, never the last
    out = root / "killed"
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "betaweighter", "suite", str(suite),
                              "--out", str(out), "--device", "cpu"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while len(list((out / "cells").rglob("*.json"))) < kill_after and child.poll() is None:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    killed_at = time.perf_counter() - start
    before = cell_files(out)
    seconds, err = run(suite, out)
    computed, reused = counts(err)
    after = cell_files(out)
    resumed = json.loads((out / "results.json").read_text())
    print(json.dumps({
        "case": "killed_and_resumed", "kill_after_cells": kill_after,
        "finished_at_kill": len(before), "seconds_before_kill": round(killed_at, 1),
        "reused": reused, "computed": computed, "seconds_resume": round(seconds, 1),
        "finished_cells_unchanged": all(after[k] == v for k, v in before.items()),
        "temporary_files_left": len(list(out.rglob(".*.tmp"))),
        "table_equals_full_run": resumed["values"] == results["values"],
        "cells_differing_from_full_run": [f"{m} x {t}" for m, row in resumed["values"].items()
                                          for t, v in row.items()
                                          if v != results["values"][m][t]]}), flush=True)


if __name__ == "__main__":
    main()
