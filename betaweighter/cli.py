"""The `betaweighter` command: experiments, the demo, plots, weights, evaluation."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from betaweighter import __version__
from betaweighter.commands import COMMANDS, format_summary

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
    ev.add_argument("--task", required=True, metavar="TASK", choices=_Names(_task_names),
                    help="the transfer task, one of: %(choices)s")
    ev.add_argument("--fuse-mode", choices=_Names(_fusion_modes), default="cat",
                    metavar="MODE", help="how several checkpoints' features are combined: "
                                         "%(choices)s (default: cat)")

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


class _Names(Sequence[str]):
    """Choices for argparse read from the library only when used (a parse or a subcommand's
    --help), so the names stay where they are declared and ``betaweighter --help`` stays
    fast."""

    def __init__(self, load: Callable[[], Sequence[str]]) -> None:
        self._load = load
        self._names: tuple[str, ...] | None = None

    def _all(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(self._load())
        return self._names

    def __getitem__(self, i):  # noqa: ANN001, ANN204 - Sequence's own signature
        return self._all()[i]

    def __len__(self) -> int:
        return len(self._all())

    def __contains__(self, name: object) -> bool:
        return name in self._all()


def _task_names() -> tuple[str, ...]:
    from betaweighter.experiment.sections import task_names

    return task_names()


def _fusion_modes() -> tuple[str, ...]:
    from betaweighter.evaluate.fusion import FUSION_MODES

    return tuple(FUSION_MODES)


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


def _one_line(error: BaseException | str) -> str:
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


if __name__ == "__main__":
    sys.exit(main())
