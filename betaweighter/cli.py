"""The `betaweighter` command: experiments, the demo, plots, weights, evaluation."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
from pathlib import Path

from betaweighter import __version__

__all__ = ["COMMANDS", "EPILOG", "format_summary", "main"]

EPILOG = """examples:
  betaweighter demo
  betaweighter configs
  betaweighter compare demo --seeds 3
  betaweighter run stl10/bdw --set data.root=~/data --set train.epochs=35
  betaweighter run my_config.yaml --dry-run
  betaweighter run --resume runs/stl10-bdw
  betaweighter run --resume runs/stl10-bdw --set train.epochs=50     # extend a run
  betaweighter plot runs/stl10-bdw
  betaweighter weights runs/stl10-bdw > weights.csv
  betaweighter evaluate runs/stl10-bdw my_fewshot.yaml --task fewshot
  betaweighter evaluate runs/spatial runs/appearance --task linear linear.yaml   # fused
  betaweighter invariance runs/demo-bdw
  betaweighter invariance runs/stl10-bdw invariance.yaml --set evaluate.invariance.k=16
  betaweighter suite my_suite.yaml --out suite-results      # models x tasks, one table
  torchrun --standalone --nproc_per_node 2 -m betaweighter run demo
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="betaweighter", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Meta-learned instance weights and pruning for self-supervised "
                    "pre-training (BDW, arXiv:2006.12360).")
    p.add_argument("--version", action="version", version=f"betaweighter {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sets, device, layout = _shared_options()
    run = sub.add_parser("run", parents=[sets, device],
                         help="pre-train with a YAML config (a file or a shipped name)")
    run.add_argument("config", nargs="?", help="YAML config file, or a shipped config name "
                                               "(see `betaweighter configs`)")
    run.add_argument("--out", help="output root for the run directory (experiment.output_root)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run (with --set: a moved "
                     "dataset, more epochs, a new learning rate, device or precision)")
    run.add_argument("--from", dest="which", choices=["last", "best"], default="last",
                     help="with --resume: the checkpoint to continue from (default: last)")
    run.add_argument("--download", action="store_true",
                     help="allow downloading the dataset when torchvision can fetch it")
    run.add_argument("--dry-run", action="store_true",
                     help="print the resolved config and the run directory, then exit")

    demo = sub.add_parser("demo", parents=[sets],
                          help="a few-minute `compare` on the embedded demo set")
    demo.add_argument("--out", default="runs", help="output root (default: runs)")
    demo.add_argument("--seeds", type=int, default=1, help="number of seeds (default: 1)")

    cmp = sub.add_parser("compare", parents=[sets],
                         help="does weighting pay? the baseline, weights + pruning and three "
                              "controls (random, NN-Weighter, shuffled meta-gradients), over "
                              "seeds")
    cmp.add_argument("config", help="YAML config (file or shipped name) with pruning enabled")
    cmp.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    cmp.add_argument("--out", default="runs", help="output root (default: runs)")
    cmp.add_argument("--variants", nargs="+", metavar="NAME",
                     default=["rotnet", "bdw", "random", "nn", "shuffled"],
                     help="variants to run (default: all of rotnet bdw random nn shuffled)")

    sub.add_parser("configs", help="list the shipped configs")

    plot = sub.add_parser("plot", help="(re)draw a run's plots from its files")
    plot.add_argument("run_dir")

    weights = sub.add_parser("weights", help="per-instance mean, std and pruned flag as CSV, "
                                             "and a verdict on what the weights separate")
    weights.add_argument("run_dir")
    weights.add_argument("-o", "--output", help="file to write (default: standard output)")

    ev = sub.add_parser("evaluate", parents=[sets, device, layout],
                        help="transfer evaluation of a checkpoint or run, or of the fusion "
                             "of several")
    ev.add_argument("paths", nargs="+", metavar="CHECKPOINT [CONFIG]",
                    help="a checkpoint file or a run directory (several: their features are "
                         "fused, see --fuse-mode), then optionally a YAML config with an "
                         "evaluate.<task> section")
    ev.add_argument("--task", required=True, choices=["linear", "fewshot", "finetune",
                                                       "detection", "invariance", "segmentation",
                                                       "instance_segmentation"])
    ev.add_argument("--fuse-mode", choices=["cat", "add", "mean"], default="cat",
                    help="how several checkpoints' features are combined (default: cat)")

    inv = sub.add_parser("invariance", parents=[sets, device, layout],
                         help="how invariant a checkpoint's features are to synthetic "
                              "transformations (invariance.csv and plots beside the "
                              "checkpoint)")
    inv.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    inv.add_argument("config", nargs="?", help="YAML config with an evaluate.invariance "
                                               "section (default: the run's own test split)")

    suite = sub.add_parser("suite", parents=[device],
                           help="every model of a suite file on every transfer task: "
                                "resumable cells, one table with ranks, a heat map and rank "
                                "correlations")
    suite.add_argument("suite", metavar="SUITE.yaml", help="YAML listing models (name, path, "
                       "optional format and arch) and tasks (name and one protocol section: "
                       "linear, fewshot, ... with its evaluate.<task> options)")
    suite.add_argument("--out", help="output folder (default: the suite's output key, else "
                                     "<suite name>-results beside the file)")
    return p


def _shared_options() -> tuple[argparse.ArgumentParser, ...]:
    """The options several commands share, declared once (argparse parent parsers):
    ``--set``, ``--device``, and ``--format``/``--arch`` for commands that read weights."""
    from betaweighter.published import ALIASES, FORMATS

    sets = argparse.ArgumentParser(add_help=False)
    sets.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE", help="override a config key, e.g. --set "
                                                "train.lr=0.01 or --set evaluate.fewshot.way=10 "
                                                "(repeatable)")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the config's, else "
                                         "the GPU when there is one)")
    layout = argparse.ArgumentParser(add_help=False)
    layout.add_argument("--format", default="auto", metavar="FORMAT",
                         choices=[*FORMATS, *ALIASES],
                         help="the checkpoint's key layout: auto (detected from the keys), "
                              + ", ".join(FORMATS[1:]) + " (default: auto)")
    layout.add_argument("--arch", help="the architecture, where the file does not say: a "
                                        "torchvision ResNet name, or a timm model name with "
                                        "--format timm")
    return sets, device, layout


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # `evaluate RUN --task linear CONFIG`: argparse does not take a positional after an
    # option once the positionals before it were consumed.
    if args.command == "evaluate":
        args.paths += [e for e in extra if not e.startswith("-")]
        extra = [e for e in extra if e.startswith("-")]
        args.config = args.paths.pop() if len(args.paths) > 1 and _is_config(
            args.paths[-1]) else None
    elif (args.command == "invariance" and args.config is None and len(extra) == 1
            and not extra[0].startswith("-")):
        args.config, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    warnings.showwarning = _show_warning
    _log_to_stderr()
    from betaweighter.runtime import finish_distributed, init_distributed

    distributed = args.command in ("run", "compare", "demo") and init_distributed()
    try:
        code = _dispatch(args)
    except BaseException:
        if distributed:
            import torch.distributed

            torch.distributed.destroy_process_group()
        raise
    if distributed:
        finish_distributed(code)  # under gloo this ends the process with `code`
    return code


def _dispatch(args: argparse.Namespace) -> int:
    from betaweighter.errors import BetaweighterError
    from betaweighter.experiment.interrupt import Interrupted
    from betaweighter.runtime import is_main

    # Under torchrun every rank meets the same mistake: rank 0 alone says so, all exit 2.
    try:
        return COMMANDS[args.command](args)
    except BetaweighterError as e:
        _keep_exit_status(meet=True)
        if is_main():
            print(f"betaweighter: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Interrupted as e:  # 130 for SIGINT, 143 for SIGTERM
        _keep_exit_status(meet=True)
        if is_main():
            print(str(e), file=sys.stderr)
        return e.status
    except KeyboardInterrupt as e:  # a second signal: no waiting
        _keep_exit_status(meet=False)
        if is_main():
            print("interrupted", file=sys.stderr)
        return getattr(e, "status", 130)


def _keep_exit_status(meet: bool) -> None:
    """Under torchrun, ignore SIGTERM once this process knows how it ends, and (`meet`)
    wait for the other ranks to know too: torchrun stops every rank with SIGTERM as soon as
    one has exited, and each should end with its own status (2 for a mistake, 130 or 143
    for an interrupt), not be killed half-way to it."""
    import signal

    from betaweighter.runtime import meet_every_rank, world

    if world()[0] > 1:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if meet:
            meet_every_rank("betaweighter/exit")


def _is_config(path: str) -> bool:
    """A YAML/JSON file, a file that is not a torch archive, or a shipped config's name
    (anything else is taken for a checkpoint or a run directory)."""
    import zipfile

    from betaweighter.experiment.shipped import shipped_configs

    p = Path(path).expanduser()
    if p.suffix.lower() in (".yaml", ".yml", ".json"):
        return True
    if p.exists():
        return p.is_file() and not zipfile.is_zipfile(p)
    name = path[:-5] if path.endswith(".yaml") else path
    return name in {n for n, _ in shipped_configs()}


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (so redirections hold)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "warning: " if record.levelno >= logging.WARNING else ""
        return f"betaweighter: {level}{_one_line(record.getMessage())}"


def _log_to_stderr() -> None:
    """The library's log records (notes, warnings: logger "betaweighter") as one line each
    on stderr, from rank 0 only; set up once per process."""
    from betaweighter.runtime import is_main

    logger = logging.getLogger("betaweighter")
    if any(getattr(h, "_betaweighter_cli", False) for h in logger.handlers):
        return
    handler = _Stderr()
    handler.setFormatter(_OneLine())
    handler.addFilter(lambda record: is_main())
    handler._betaweighter_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from betaweighter.runtime import is_main

    if is_main():
        print(f"betaweighter: warning: {_one_line(message)}", file=sys.stderr)


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

if __name__ == "__main__":
    sys.exit(main())
