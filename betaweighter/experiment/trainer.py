"""The reference recipe: rotation pre-training with instance weights and pruning, a linear
probe on the target's validation split after each epoch, the best checkpoint kept, and the
test accuracy of the best model at the end (Ericsson et al., arXiv:2006.12360, section 4;
protocol details in bdw_spec.md, sections 1.3-1.4 and 4.5)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F
from tqdm.auto import tqdm

from betaweighter.evaluate.features import extract_features
from betaweighter.evaluate.linear import fit_linear_probe
from betaweighter.experiment import report
from betaweighter.experiment.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from betaweighter.experiment.config import Config, dump_config, load_config
from betaweighter.experiment.factory import Components, build
from betaweighter.experiment.metrics import MetricsLog
from betaweighter.experiment.plots import HIST_BINS
from betaweighter.experiment.rundir import create_run_dir
from betaweighter.pretext.rotation import rotate4


class Trainer:
    """One run in its own directory. `run()` trains to the end (or resumes) and returns the
    summary; `stop_after` ends it early after that epoch, as a crash would (for tests)."""

    def __init__(self, cfg: Config, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "plots").mkdir(exist_ok=True)
        splits = self.run_dir / "splits.json"
        self.c: Components = build(cfg, splits=splits if splits.is_file() else None)
        if not splits.is_file():
            self.c.bundle.save_splits(splits)
        dump_config(cfg, self.run_dir / "config.yaml")
        self.epoch = 0
        self.step = 0
        self.images_seen = 0
        self.best_val = -np.inf
        self.best_epoch = -1
        self.train_seconds = 0.0
        self.histograms: list[np.ndarray] = []
        self.metrics = MetricsLog(self.run_dir / "metrics.csv")

    @classmethod
    def start(cls, cfg: Config) -> Trainer:
        """A new run in a fresh directory under ``experiment.output_root``. If building the
        data or the components fails (a missing dataset, a bad option), the empty directory
        is removed again, so a corrected retry gets the same name."""
        run_dir = create_run_dir(cfg.experiment.output_root, cfg.experiment.name)
        try:
            return cls(cfg, run_dir)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise

    # -- resume ----------------------------------------------------------------------------
    @classmethod
    def resume(cls, run_dir: str | Path) -> Trainer:
        """Continue a run from ``run_dir/checkpoints/last.pt`` with its own config."""
        run_dir = Path(run_dir)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise CheckpointError(f"{str(run_dir)!r} is not a run directory (no config.yaml)")
        cfg = load_config(cfg_path)
        state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        if state["config"] != cfg.to_dict():
            raise CheckpointError(f"checkpoint {str(run_dir / 'checkpoints' / 'last.pt')!r} was "
                                  f"written with another config than {str(cfg_path)!r}: "
                                  "restore the original config.yaml or start a new run")
        trainer = cls(cfg, run_dir)
        trainer._load(state)
        return trainer

    def _load(self, s: dict[str, Any]) -> None:
        c = self.c
        try:
            c.model.load_state_dict(s["model"])
            c.optimizer.load_state_dict(s["optimizer"])
            c.scheduler.load_state_dict(s["scheduler"])
            c.weights.load_state_dict(s["weights"])
            c.meta.load_state_dict(s["meta"])
            c.pruner.load_state_dict(s["pruner"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"checkpoint in {str(self.ckpt_dir)!r} does not match this "
                                  f"run's model/weights ({e}); start a new run") from None
        self.epoch, self.step = s["epoch"], s["step"]
        self.images_seen, self.train_seconds = s["images_seen"], s["train_seconds"]
        self.best_val, self.best_epoch = s["best_val"], s["best_epoch"]
        self.histograms = [np.asarray(h) for h in s["histograms"]]
        self.metrics = MetricsLog(self.run_dir / "metrics.csv", s["metrics"])
        set_rng_state(s["rng"])

    def _state(self) -> dict[str, Any]:
        c = self.c
        return {
            "model": c.model.state_dict(), "model_config": c.model_config,
            "optimizer": c.optimizer.state_dict(), "scheduler": c.scheduler.state_dict(),
            "weights": c.weights.state_dict(), "meta": c.meta.state_dict(),
            "pruner": c.pruner.state_dict(), "epoch": self.epoch, "step": self.step,
            "images_seen": self.images_seen, "train_seconds": self.train_seconds,
            "best_val": self.best_val, "best_epoch": self.best_epoch,
            "histograms": [h.tolist() for h in self.histograms],
            "metrics": self.metrics.rows, "config": self.cfg.to_dict(), "rng": rng_state(),
        }

    # -- the recipe --------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> dict[str, Any] | None:
        epochs = self.cfg.train.epochs
        bar = tqdm(range(self.epoch, epochs), desc=self.run_dir.name, disable=None,
                   initial=self.epoch, total=epochs)
        for _ in bar:
            row = self._train_epoch()
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{row['val_accuracy']:.3f}",
                            kept=f"{row['kept_fraction']:.2f}")
            if stop_after is not None and self.epoch >= stop_after and self.epoch < epochs:
                return None
        return report.finish(self)

    def _train_epoch(self) -> dict[str, Any]:
        c, cfg = self.c, self.cfg
        loader = c.pruner.loader(c.bundle.pool, batch_size=cfg.train.batch_size,
                                 num_workers=cfg.data.workers,
                                 pin_memory=c.device.type == "cuda")
        losses, meta_losses, seen = [], [], 0
        limit = cfg.train.max_steps_per_epoch
        c.model.train()
        start = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}", disable=None, leave=False)
        for i, (x, idx) in enumerate(bar):
            if limit is not None and i >= limit:
                break
            x = x.to(c.device, non_blocking=True)
            inputs, labels = rotate4(x)
            scale = c.pruner.loss_scale(idx).to(c.device).repeat_interleave(4)

            def per_sample(out, labels=labels, scale=scale):
                return F.cross_entropy(out, labels, reduction="none") * scale

            meta_steps = c.meta.meta_steps
            loss = c.meta.backward(inputs, per_sample, idx)
            c.optimizer.step()
            c.optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss))
            if c.meta.meta_steps > meta_steps:  # this call ran a meta update
                meta_losses.append(c.meta.last_meta_loss)
            seen += len(x)
            self.step += 1
            bar.set_postfix(loss=f"{float(loss):.3f}", meta=f"{c.meta.last_meta_loss:.3f}",
                            w=f"{c.meta.last_mean_weight:.3f}",
                            kept=f"{c.pruner.kept_fraction:.2f}")
        seconds = time.perf_counter() - start
        self.train_seconds += seconds
        self.images_seen += seen
        lr = c.optimizer.param_groups[0]["lr"]
        c.scheduler.step()
        record = c.pruner.step()
        self.epoch += 1
        c.weights.on_epoch_end(self.epoch, c.model)  # e.g. NN-Weighter's distance refresh
        mean_w = c.weights.mean().detach().float().cpu().numpy()
        self.histograms.append(np.histogram(mean_w, bins=HIST_BINS)[0])
        val = self._validate() if self._evaluate_now() else float("nan")
        row = {
            "epoch": self.epoch, "train_loss": _mean(losses), "meta_loss": _mean(meta_losses),
            "mean_weight": float(mean_w.mean()), "val_accuracy": val,
            "kept_fraction": record.get("kept_fraction", c.pruner.kept_fraction),
            "pruned": record.get("pruned", 0), "pruned_in_domain": record.get("pruned_in_domain"),
            "epoch_seconds": seconds, "images_seen": self.images_seen, "lr": lr,
        }
        self.metrics.append(row)
        improved = val == val and val > self.best_val
        if improved:
            self.best_val, self.best_epoch = val, self.epoch
        state = self._state()
        save_checkpoint(self.ckpt_dir / "last.pt", state)
        if improved:
            save_checkpoint(self.ckpt_dir / "best.pt", state)
        return row

    def _evaluate_now(self) -> bool:
        every = self.cfg.evaluate.every
        return self.epoch % every == 0 or self.epoch == self.cfg.train.epochs

    def _validate(self) -> float:
        """Linear-probe accuracy on target_val after fitting on target_train (selection)."""
        c, e = self.c, self.cfg.evaluate
        train = extract_features(c.model, c.bundle.target_train, batch_size=e.batch_size,
                                 device=c.device, name="target_train")
        val = extract_features(c.model, c.bundle.target_val, batch_size=e.batch_size,
                               device=c.device, name="target_val")
        result = fit_linear_probe(train, val, val, c_values=e.c_grid, max_iter=e.max_iter)
        return float(result["val_score"])


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")

