"""The implementations of the `betaweighter` subcommands: each takes the parsed arguments
and returns the exit status (`betaweighter.cli` parses, dispatches and reports errors)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

__all__ = ["COMMANDS", "format_summary"]


def _run(args: argparse.Namespace) -> int:
    from betaweighter.errors import ConfigError, OutputError
    from betaweighter.experiment.config import dump_config, load_config
    from betaweighter.experiment.rundir import RunDir, run_dir_name
    from betaweighter.experiment.shipped import config_file
    from betaweighter.experiment.trainer import Trainer
    from betaweighter.runtime import is_main, resolve_device

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own config.yaml; drop the "
                              "CONFIG argument")
        if args.out or args.download:
            raise ConfigError("--out and --download do not apply to --resume")
        if args.dry_run:
            print(dump_config(RunDir(args.resume).config()), end="")
            print(f"# would resume {args.resume}", file=sys.stderr)
            return 0
        trainer = Trainer.resume(args.resume, args.which, overrides)
        if is_main():
            epochs = trainer.cfg.train.epochs
            print(f"resuming {trainer.run_dir} at epoch {trainer.epoch}/{epochs}"
                  + (" (all trained: writing the end-of-run files)"
                     if trainer.epoch >= epochs else ""), file=sys.stderr)
    else:
        if args.which != "last":
            raise ConfigError("--from applies to --resume only")
        if not args.config:
            raise ConfigError("give a CONFIG file or shipped name (e.g. demo; see "
                              "`betaweighter configs`) or --resume RUN_DIR")
        if args.out:
            overrides.append(f"experiment.output_root={args.out}")
        if args.download:
            overrides.append("data.download=true")
        with config_file(args.config) as path:
            cfg = load_config(path, overrides)
        if args.dry_run:
            resolve_device(cfg.train.device, key="config key 'train.device'")
            print(dump_config(cfg), end="")
            root = Path(cfg.experiment.output_root).expanduser()
            name = run_dir_name(cfg.experiment.name)
            print(f"# would write to a new directory {root / name} (or {name}-N if taken)",
                  file=sys.stderr)
            return 0
        trainer = Trainer.start(cfg)
        if is_main():
            print(f"run directory: {trainer.run_dir}", file=sys.stderr)
    with trainer:
        try:
            summary = trainer.run()
        except OutputError as e:  # a full disk at a checkpoint or a plot: how to go on
            raise OutputError(e.path, f"{e}; {_after_write_failure(trainer)}", e.errno) from None
    if summary is not None:
        print(format_summary(summary, trainer.run_dir))
    return 0


def _after_write_failure(trainer) -> str:
    """What to do after a write failed mid-run: resume, or start again."""
    if trainer.rundir.checkpoint_path("last").is_file():
        return f"then continue with: betaweighter run --resume {trainer.run_dir}"
    return "the run had no checkpoint yet: run it again"


def _demo(args: argparse.Namespace) -> int:
    from betaweighter.experiment.demo import run_demo

    run_demo(args.out, args.overrides, args.seeds)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from betaweighter.errors import ConfigError
    from betaweighter.experiment.compare import compare
    from betaweighter.experiment.config import load_config
    from betaweighter.experiment.shipped import config_file

    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    with config_file(args.config) as path:
        cfg = load_config(path, args.overrides)
    result = compare(cfg, range(args.seeds), args.out, variants=args.variants)
    from betaweighter.experiment.compare import verdict
    from betaweighter.runtime import is_main

    if not is_main():
        return 0
    print(result.format())
    print(verdict(result))
    print(f"files: {result.directory} (compare.json, compare.csv, compare.png, one run "
          "directory per variant and seed)")
    return 0


def _configs(args: argparse.Namespace) -> int:
    from betaweighter.experiment.shipped import shipped_configs

    rows = shipped_configs()
    width = max(len(name) for name, _ in rows)
    for name, line in rows:
        print(f"{name.ljust(width)}  {line}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from betaweighter.experiment.plots import draw_run_plots
    from betaweighter.experiment.rundir import RunDir

    for path in draw_run_plots(RunDir(args.run_dir)):
        print(path)
    return 0


def _weights(args: argparse.Namespace) -> int:
    from betaweighter.experiment.inspect import read_weights

    table, verdict = read_weights(args.run_dir)
    if args.output:
        from betaweighter.io import atomic_write_text

        atomic_write_text(args.output, table)
    else:
        sys.stdout.write(table)
    print(verdict, file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from betaweighter.experiment.evaluation import evaluate_checkpoint, result_path
    from betaweighter.experiment.shipped import config_file

    checkpoints = args.paths if len(args.paths) > 1 else args.paths[0]
    if args.config:
        with config_file(args.config) as path:
            payload = evaluate_checkpoint(checkpoints, args.task, path, args.overrides,
                                          device=args.device, fuse_mode=args.fuse_mode,
                                          format=args.format, arch=args.arch)
    else:
        payload = evaluate_checkpoint(checkpoints, args.task, None, args.overrides,
                                      device=args.device, fuse_mode=args.fuse_mode,
                                      format=args.format, arch=args.arch)
    print(json.dumps(payload["result"], indent=2, default=float))
    print(f"written to {result_path(checkpoints, args.task, args.fuse_mode)}",
          file=sys.stderr)
    return 0


def _invariance(args: argparse.Namespace) -> int:
    from betaweighter.evaluate.invariance_table import InvarianceTable
    from betaweighter.experiment.evaluation import evaluate_checkpoint
    from betaweighter.experiment.shipped import config_file

    if args.config:
        with config_file(args.config) as path:
            payload = evaluate_checkpoint(args.checkpoint, "invariance", path, args.overrides,
                                          device=args.device, format=args.format,
                                          arch=args.arch)
    else:
        payload = evaluate_checkpoint(args.checkpoint, "invariance", None, args.overrides,
                                      device=args.device, format=args.format, arch=args.arch)
    result = payload["result"]
    table = InvarianceTable.read_csv(result["files"]["table"], result["protocol"])
    print(table.format())
    if result.get("views"):
        views = result["views"]
        print(f"{'views':<14}{views['similarity']:>12.3f}{views['distance']:>12.2f}"
              f"{views['params']:>8d}")
    for path in result["files"].values():
        print(f"written {path}", file=sys.stderr)
    return 0


def _suite(args: argparse.Namespace) -> int:
    from betaweighter.experiment.suite import run_suite

    run = run_suite(args.suite, args.out, args.device)
    if run.report is not None:
        print(run.report.text)
    print(f"cells: {len(run.computed)} computed, {len(run.reused)} reused from earlier runs",
          file=sys.stderr)
    print(f"files: {run.output} (results.csv, results.json, ranks.md, ranks.csv, "
          "correlations.csv, heatmap.png, cells/)", file=sys.stderr)
    return 0


def format_summary(summary: dict, run_dir: Path) -> str:
    """A few readable lines for the end of ``betaweighter run``."""
    lines = [f"run {summary['run']} finished: {summary['epochs']} epochs of "
             f"{summary['method']} on {summary['dataset']}",
             f"  test accuracy (linear probe)  {100 * summary['test_accuracy']:.1f}%  "
             f"(best epoch {summary['best_epoch']}, "
             f"val {100 * summary['best_val_accuracy']:.1f}%)",
             f"  kept fraction                 {float(summary['kept_fraction']):.2f}",
             f"  training time                 {summary['train_seconds']:.0f} s, "
             f"{summary['images_seen']} images"]
    for key, label in (("auroc_in_domain", "AUROC in-domain vs rest"),
                       ("pruned_in_domain_share", "in-domain share of pruned")):
        value = summary.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            lines.append(f"  {label:<29} {float(summary[key]):.2f}")
    lines.append(f"  files: {run_dir} (summary.json, metrics.csv, weights.csv, plots/)")
    return "\n".join(lines)



COMMANDS = {"run": _run, "demo": _demo, "compare": _compare, "configs": _configs, "plot": _plot,
            "weights": _weights, "evaluate": _evaluate,
            "invariance": _invariance, "suite": _suite}
