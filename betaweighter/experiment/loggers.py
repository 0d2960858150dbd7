"""Where a run's numbers go besides ``metrics.csv``: TensorBoard, Weights & Biases.

``metrics.csv`` is always written: it is the run's own record, which ``--resume``,
``compare``, the plots and ``summary.json`` read. ``train.loggers`` adds sinks to it:

- ``tensorboard``: ``torch.utils.tensorboard`` event files in ``<run>/tensorboard`` (the
  ``tensorboard`` extra);
- ``wandb``: a Weights & Biases run named after the run directory, resumed with it (the
  ``wandb`` extra; project from ``WANDB_PROJECT``, default ``betaweighter``).

Each sink gets the step's scalars (training loss, meta loss, mean weight) every step, the
epoch's row of ``metrics.csv`` and a histogram of the instance weights every epoch, and the
diagnostics plots at the end. Only rank 0 logs.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from betaweighter.errors import ConfigError

__all__ = ["LOGGERS", "RunLogger", "TensorBoardLogger", "WandbLogger", "build_loggers",
           "log"]

log = logging.getLogger("betaweighter")


class RunLogger:
    """A sink for a run's numbers; every method does nothing unless a sink overrides it."""

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        """Scalars of one optimisation step (`step` counts from 1 over the whole run)."""

    def log_epoch(self, epoch: int, row: dict[str, Any], weights: np.ndarray) -> None:
        """The epoch's ``metrics.csv`` row and every instance's mean weight."""

    def log_images(self, epoch: int, paths: Sequence[Path]) -> None:
        """The diagnostics plots written at the end of the run."""

    def close(self) -> None:
        """Flush and release what the sink holds."""


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(float(v))}


class TensorBoardLogger(RunLogger):
    """Event files in ``<run_dir>/tensorboard``, read by ``tensorboard --logdir``."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("config key 'train.loggers': tensorboard needs the tensorboard "
                              "package: pip install 'betaweighter[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in _scalars(scalars).items():
            self.writer.add_scalar(f"step/{name}", value, step)

    def log_epoch(self, epoch: int, row: dict[str, Any], weights: np.ndarray) -> None:
        for name, value in _scalars(row).items():
            if name != "epoch":
                self.writer.add_scalar(f"epoch/{name}", value, epoch)
        if weights.size:
            self.writer.add_histogram("weights", weights, epoch)
        self.writer.flush()

    def log_images(self, epoch: int, paths: Sequence[Path]) -> None:
        from PIL import Image

        for path in paths:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(f"plots/{path.stem}", pixels, epoch, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger(RunLogger):
    """A Weights & Biases run with the run directory's name as its id, so ``--resume``
    continues the same W&B run."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("config key 'train.loggers': wandb needs the wandb package: "
                              "pip install 'betaweighter[wandb]'") from None
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "betaweighter"),
                              name=run_dir.name, id=run_dir.name, resume="allow",
                              dir=str(run_dir), config=config)

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log({f"step/{k}": v for k, v in _scalars(scalars).items()}, step=step)

    def log_epoch(self, epoch: int, row: dict[str, Any], weights: np.ndarray) -> None:
        values: dict[str, Any] = {f"epoch/{k}": v for k, v in _scalars(row).items()}
        if weights.size:
            values["weights"] = self.wandb.Histogram(weights)
        self.run.log(values)

    def log_images(self, epoch: int, paths: Sequence[Path]) -> None:
        self.run.log({f"plots/{p.stem}": self.wandb.Image(str(p)) for p in paths})

    def close(self) -> None:
        self.run.finish()


class _Fanout(RunLogger):
    def __init__(self, sinks: list[RunLogger]) -> None:
        self.sinks = sinks

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        for s in self.sinks:
            s.log_step(step, scalars)

    def log_epoch(self, epoch: int, row: dict[str, Any], weights: np.ndarray) -> None:
        for s in self.sinks:
            s.log_epoch(epoch, row, weights)

    def log_images(self, epoch: int, paths: Sequence[Path]) -> None:
        for s in self.sinks:
            s.log_images(epoch, paths)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


LOGGERS = ("csv", "tensorboard", "wandb")


def build_loggers(names: Sequence[str], run_dir: str | os.PathLike,
                  config: dict[str, Any] | None = None) -> RunLogger:
    """The sinks `names` (from LOGGERS; ``csv`` is ``metrics.csv``, always written by the
    trainer) as one `RunLogger`."""
    run_dir = Path(run_dir)
    sinks: list[RunLogger] = []
    for name in dict.fromkeys(names):
        if name == "tensorboard":
            sinks.append(TensorBoardLogger(run_dir))
        elif name == "wandb":
            sinks.append(WandbLogger(run_dir, config or {}))
        elif name != "csv":
            raise ConfigError(f"config key 'train.loggers': unknown logger {name!r}; choose "
                              f"from {', '.join(LOGGERS)}")
    return _Fanout(sinks)
