"""Visual Decathlon from Python through the YAML config and the reference recipe.

    python examples/decathlon.py --data-root ~/data --target dtd
    python examples/decathlon.py --data-root ~/data --target gtsrb --method l2rw

`--data-root` holds ``decathlon-1.0/`` (annotations/ and data/ as the official devkit lays
them out). The pool is every other domain's images plus the target's unlabelled part; the
target's labelled train split feeds the meta objective; its official val split is the test
set. This is what ``betaweighter run decathlon/bdw --set data.root=...`` does, written as a
script so that any key can be changed in code.
"""

from __future__ import annotations

import argparse
import json

from betaweighter.experiment.config import load_config
from betaweighter.experiment.shipped import config_file
from betaweighter.experiment.trainer import Trainer


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True, help="folder holding decathlon-1.0/")
    p.add_argument("--target", default="dtd", help="labelled target domain")
    p.add_argument("--method", default="bdw",
                   help="a shipped config of decathlon/ (betaweighter configs lists them)")
    p.add_argument("--out", default="runs", help="where run directories go")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config override, e.g. --set train.epochs=5")
    args = p.parse_args(argv)

    with config_file(f"decathlon/{args.method}") as path:
        cfg = load_config(path, [
            f"data.root={args.data_root}", f"data.target={args.target}",
            f"experiment.name=decathlon-{args.target}-{args.method}",
            f"experiment.output_root={args.out}", *args.overrides,
        ])
    with Trainer.start(cfg) as trainer:  # a fresh run directory under output_root
        print(f"writing to {trainer.run_dir}")
        summary = trainer.run()
    print(json.dumps(summary, indent=2, default=float))
    return summary


if __name__ == "__main__":
    main()
