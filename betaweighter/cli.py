"""The `betaweighter` command: run experiments, the demo, plots, weight export, evaluation."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from betaweighter import __version__

EPILOG = """examples:
  betaweighter demo
  betaweighter run configs/stl10/bdw.yaml --set data.root=~/data --set train.epochs=35
  betaweighter run --resume runs/stl10-bdw
  betaweighter plot runs/stl10-bdw
  betaweighter weights runs/stl10-bdw > weights.csv
  betaweighter evaluate runs/stl10-bdw --task fewshot my_fewshot.yaml
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="betaweighter", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Meta-learned instance weights and pruning for self-supervised "
                    "pre-training (BDW, arXiv:2006.12360).")
    p.add_argument("--version", action="version", version=f"betaweighter {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="pre-train with a YAML config (the reference recipe)")
    run.add_argument("config", nargs="?", help="YAML config (not needed with --resume)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set train.lr=0.01 (repeatable)")
    run.add_argument("--out", help="output root for the run directory (experiment.output_root)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    run.add_argument("--download", action="store_true",
                     help="allow downloading the dataset when torchvision can fetch it")

    demo = sub.add_parser("demo", help="a few-minute comparison on the embedded demo set")
    demo.add_argument("--out", default="runs", help="output root (default: runs)")
    demo.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE", help="override a key of the demo config")

    plot = sub.add_parser("plot", help="(re)draw a run's plots")
    plot.add_argument("run_dir")

    weights = sub.add_parser("weights", help="export per-instance mean, std and pruned flag "
                                             "as CSV")
    weights.add_argument("run_dir")
    weights.add_argument("-o", "--output", help="file to write (default: standard output)")

    ev = sub.add_parser("evaluate", help="transfer evaluation of a checkpoint or run")
    ev.add_argument("checkpoint", help="a checkpoint file or a run directory")
    ev.add_argument("config", nargs="?", help="YAML/JSON config of the evaluation data")
    ev.add_argument("--task", required=True, choices=["linear", "fewshot", "finetune",
                                                       "detection"])
    ev.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: GPU if present)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # `evaluate RUN --task linear CONFIG`: argparse does not take a positional after an
    # option once the positionals before it were consumed.
    if (args.command == "evaluate" and args.config is None and len(extra) == 1
            and not extra[0].startswith("-")):
        args.config, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from betaweighter.data.errors import CorruptDatasetError, DatasetNotFoundError
    from betaweighter.evaluate.checkpoint import CheckpointError
    from betaweighter.evaluate.config import ConfigError as EvalConfigError
    from betaweighter.experiment.config import ConfigError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, EvalConfigError, CheckpointError, DatasetNotFoundError,
            CorruptDatasetError) as e:
        print(f"betaweighter: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from betaweighter.experiment.config import ConfigError, load_config
    from betaweighter.experiment.trainer import Trainer

    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume continues a run with its own config.yaml; drop the "
                              "CONFIG argument and --set")
        trainer = Trainer.resume(args.resume)
    else:
        if not args.config:
            raise ConfigError("give a CONFIG file (e.g. configs/demo.yaml) or --resume RUN_DIR")
        overrides = list(args.overrides)
        if args.out:
            overrides.append(f"experiment.output_root={args.out}")
        if args.download:
            overrides.append("data.download=true")
        trainer = Trainer.start(load_config(args.config, overrides))
    print(f"run directory: {trainer.run_dir}", file=sys.stderr)
    summary = trainer.run()
    print(json.dumps(summary, indent=2, default=float))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from betaweighter.experiment.demo import run_demo

    run_demo(args.out, args.overrides)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from betaweighter.experiment.trainer import Trainer

    trainer = Trainer.resume(args.run_dir)
    from betaweighter.experiment.report import make_plots

    for path in make_plots(Path(args.run_dir), trainer):
        print(path)
    return 0


def _weights(args: argparse.Namespace) -> int:
    from betaweighter.experiment.report import weights_table
    from betaweighter.experiment.trainer import Trainer

    trainer = Trainer.resume(args.run_dir)
    text = weights_table(trainer.c.weights, trainer.c.pruner.pruned)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from betaweighter.evaluate.run import evaluate, result_path

    payload = evaluate(args.checkpoint, args.task, args.config, device=args.device)
    print(json.dumps(payload["result"], indent=2, default=float))
    print(f"written to {result_path(args.checkpoint, args.task)}", file=sys.stderr)
    return 0


COMMANDS = {"run": _run, "demo": _demo, "plot": _plot, "weights": _weights,
            "evaluate": _evaluate}

if __name__ == "__main__":
    sys.exit(main())
