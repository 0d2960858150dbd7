"""The training recipe: a pretext task with instance weights and pruning, a linear probe on
the target's validation split after each epoch, the best checkpoint kept, and the test
accuracy of the best model at the end (Ericsson et al., arXiv:2006.12360, section 4).

A `Trainer` owns its run directory for its whole life: it holds the directory's writer
lock, writes every file atomically (on rank 0 only, under torchrun), checkpoints every
epoch, stops cleanly at a step boundary on Ctrl-C or SIGTERM (leaving a checkpoint of that
step; after the last epoch's checkpoint it stops at once, and `resume` finishes the run), and
stops at once with `NonFiniteLossError` when the loss stops being finite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from betaweighter import __version__
from betaweighter.checkpoint import all_rng_states, rng_state, save_checkpoint, set_rng_state
from betaweighter.data.input_spec import InputSpec
from betaweighter.errors import CheckpointError, ConfigError, NonFiniteLossError
from betaweighter.evaluate.features import extract_features
from betaweighter.evaluate.linear import select_c
from betaweighter.experiment import diagnostics, plots
from betaweighter.experiment.components_state import components_state, load_components
from betaweighter.experiment.config import Config, dump_config
from betaweighter.experiment.epoch_loader import EpochLoader
from betaweighter.experiment.factory import Components, build
from betaweighter.experiment.finish import finish_run
from betaweighter.experiment.interrupt import Interrupted, any_rank, pending_signal, stop_on_signals
from betaweighter.experiment.loggers import RunLogger, build_loggers
from betaweighter.experiment.metrics import MetricsLog
from betaweighter.experiment.resume import (
    RESUME_OVERRIDES,
    apply_resume_overrides,
    check_moved_data,
    fixed_part,
    record_changes,
)
from betaweighter.experiment.rundir import RunDir, create_run_dir
from betaweighter.io import atomic_link, atomic_write_text, write_json
from betaweighter.meta.distributed import assert_identical
from betaweighter.runtime import (
    is_main,
    on_main,
    progress_disabled,
    resolve_device,
    world,
)

__all__ = ["RESUME_OVERRIDES", "Interrupted", "Trainer"]

class Trainer:
    """One run in its own directory. Build it with `start` or `resume`; `run()` trains to
    the end and returns the summary (`stop_after` ends it after that epoch, as a crash
    would, for tests). Use it as a context manager, or call `close()`, to release the
    run's lock."""

    def __init__(self, cfg: Config, run_dir: Path, splits: Path | None = None) -> None:
        self.cfg = cfg
        self.rundir = RunDir(run_dir, check=False)  # config.yaml is written once built
        self.run_dir = self.rundir.path
        self._exit = contextlib.ExitStack()
        # under torchrun, rank 0 writes; the others only read the run (and hear if it fails)
        on_main(lambda: self._exit.enter_context(self.rundir.lock()))
        try:
            self.c: Components = build(cfg, splits=splits)
        except BaseException:
            self._exit.close()
            raise
        size, rank = world()
        if size > 1:  # each process its own random stream (augmentation, Beta samples)
            torch.manual_seed(cfg.experiment.seed * 1_000_003 + rank)
        self.epoch = 0
        self.epoch_step = 0
        self.step = 0
        self.images_seen = 0
        self.best_val = -math.inf
        self.best_epoch = -1
        self.train_seconds = 0.0
        self.histograms: list[np.ndarray] = []
        self._partial: dict[str, Any] = {}
        self._pending_rng: dict[str, Any] | None = None
        self._stop_requested, self._stop_signal, self._finishing = False, 0, False
        self._data = EpochLoader(self.c, cfg, lambda: self.epoch)
        self._pending_changes: list[tuple[str, Any, Any, int]] = []
        self.metrics = MetricsLog(self.run_dir / "metrics.csv") if is_main() else None
        self.loggers = build_loggers(cfg.train.loggers, run_dir, dataclasses.asdict(cfg)) \
            if is_main() else RunLogger()  # TensorBoard, W&B: beside metrics.csv

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def start(cls, cfg: Config) -> Trainer:
        """A new run in a fresh directory under ``experiment.output_root``. If building the
        data or the components fails (a missing dataset, a bad option), the directory is
        removed again, so a corrected retry gets the same name."""
        import shutil

        resolve_device(cfg.train.device, key="config key 'train.device'")  # before any file
        root = Path(cfg.experiment.output_root).expanduser()
        fresh_root = not root.exists()
        run_dir = Path(on_main(lambda: str(create_run_dir(root, cfg.experiment.name))))
        trainer = None
        try:
            trainer = cls(cfg, run_dir)
            trainer.train_seconds = trainer.c.fit_seconds  # the weights' fit is training
            if is_main():  # a run that cannot write these (a full disk) is not started
                bundle = trainer.c.bundle
                bundle.save_splits(run_dir / "splits.json")
                atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
                write_json(run_dir / "run.json", {
                    "betaweighter": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "command": sys.argv, "data": diagnostics.data_fingerprint(bundle),
                    "data_config": trainer.data_config, "changes": []})
        except BaseException:
            if trainer is not None:
                trainer.close()
            if is_main():
                shutil.rmtree(run_dir, ignore_errors=True)
                if fresh_root and not any(root.iterdir()):
                    root.rmdir()
            raise
        return trainer

    @classmethod
    def resume(cls, run_dir: str | Path, which: str = "last",
               overrides: list[str] | None = None) -> Trainer:
        """Continue a run from ``checkpoints/<which>.pt`` with its own config. `overrides`
        (``KEY=VALUE``) may change only `RESUME_OVERRIDES`: a moved dataset (its content
        is checked against the run's), more epochs, a new learning rate, device or
        precision. Each change is recorded in run.json. A run with every epoch trained but
        no summary.json (stopped or failed after its last checkpoint) finishes its run."""
        run = RunDir(run_dir)
        saved = run.config()
        state = run.state(which)
        if fixed_part(state["config"]) != fixed_part(saved.to_dict()):
            raise CheckpointError(f"checkpoint {run.checkpoint_path(which)} was written with "
                                  f"another config than {run.config_path}: restore the "
                                  "original config.yaml, or start a new run")
        cfg, changes = apply_resume_overrides(saved, overrides or [], state)
        done = state["epoch"] >= cfg.train.epochs and state["epoch_step"] == 0
        if done and run.summary() is not None:  # else only the end-of-run work is left
            raise ConfigError(f"run {run.path} has finished all {cfg.train.epochs} epochs; "
                              "train it further with --set train.epochs=N (N > "
                              f"{cfg.train.epochs})")
        trainer = cls(cfg, run.path, splits=run.splits_file(cfg.data.name))
        try:
            check_moved_data(run.info(), trainer.c.bundle, changes)
            trainer._load(state, which)
            # recorded with the next checkpoint
            trainer._pending_changes = [(k, old, new, trainer.epoch) for k, old, new in changes]
        except BaseException:
            trainer.close()
            raise
        return trainer

    def close(self) -> None:
        """End the loader's workers and the loggers, and release the run's lock."""
        try:
            self._data.close()
            self.loggers.close()
        finally:
            self._exit.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def data_config(self) -> dict[str, Any]:
        """The input the backbone is trained on: evaluation defaults read it."""
        b = self.c.bundle
        return {"dataset": b.name,
                **InputSpec(int(b.image_size), tuple(b.mean), tuple(b.std)).to_dict()}

    # -- state -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            **components_state(self.c, self.data_config),
            "epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step,
            "partial": dict(self._partial), "images_seen": self.images_seen,
            "train_seconds": self.train_seconds, "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "histograms": [h.tolist() for h in self.histograms],
            "metrics": list(self.metrics.rows) if self.metrics else [],
            "config": self.cfg.to_dict(), "rng": rng_state(), "rng_ranks": all_rng_states(),
        }

    def _load(self, s: dict[str, Any], which: str) -> None:
        load_components(self.c, s, self.rundir.checkpoint_path(which), self.cfg.train.lr)
        self.epoch, self.epoch_step, self.step = s["epoch"], s["epoch_step"], s["step"]
        self._partial = dict(s.get("partial") or {})
        self.images_seen, self.train_seconds = s["images_seen"], s["train_seconds"]
        self.best_val, self.best_epoch = s["best_val"], s["best_epoch"]
        self.histograms = [np.asarray(h) for h in s["histograms"]]
        if is_main():
            self.metrics = MetricsLog(self.run_dir / "metrics.csv", s["metrics"])
        rng = s["rng"]
        ranks = s.get("rng_ranks") or []
        if world()[0] > 1 and len(ranks) == world()[0]:
            rng = ranks[world()[1]]
        if self.epoch_step:
            self._pending_rng = rng  # applied once the epoch's loader is rebuilt
        else:
            set_rng_state(rng)

    def _save(self, best: bool) -> None:
        state = self._state()  # on every rank: gathering the random states is collective

        def write() -> None:
            self._pending_changes = record_changes(self.rundir, self.cfg,
                                                   self._pending_changes)
            last = save_checkpoint(self.rundir.checkpoint_path("last"), state)
            if best:  # the same bytes: a hard link, not a second serialisation
                atomic_link(last, self.rundir.checkpoint_path("best"))

        on_main(write)  # the others wait for the file: torchrun ends all once one exits

    # -- the recipe ----------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> dict[str, Any] | None:
        """Train to the end (from where the run stands) and `finish`. Returns the summary
        (None on ranks other than 0, or when `stop_after` stopped it early)."""
        epochs = self.cfg.train.epochs
        bar = tqdm(range(self.epoch, epochs), desc=self.run_dir.name,
                   disable=progress_disabled(), initial=self.epoch, total=epochs)
        with stop_on_signals(self):
            for _ in bar:
                row = self._train_epoch()
                bar.set_postfix(loss=f"{row['train_loss']:.3f}",
                                val=f"{row['val_accuracy']:.3f}",
                                kept=f"{row['kept_fraction']:.2f}")
                if stop_after is not None and self.epoch >= stop_after and self.epoch < epochs:
                    return None
            self._finishing = True  # after the last checkpoint: a signal stops at once
            if self._stop_requested:  # asked for while the last epoch was validated
                raise Interrupted(self.run_dir, self.epoch, 0, self._stop_signal)
            return self.finish()

    def _train_epoch(self) -> dict[str, Any]:
        c, cfg = self.c, self.cfg
        batches, sampler, total = self._data.epoch(self.epoch_step)
        limit, size = cfg.train.max_steps_per_epoch, cfg.train.batch_size
        p = self._partial
        losses, meta_losses = p.get("losses", []), p.get("meta_losses", [])
        parts: list[dict[str, float]] = p.get("parts", [])
        seen, seconds = p.get("seen", 0), p.get("seconds", 0.0)
        c.model.train()
        c.meta.plain = c.pruner is not None and not c.pruner.scoring  # budget: scored
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None
        bar = tqdm(batches, desc=f"epoch {self.epoch + 1}", disable=progress_disabled(),
                   leave=False, total=total, initial=self.epoch_step)
        start = time.perf_counter()
        for x, idx in bar:
            if limit is not None and self.epoch_step >= limit:
                break
            positions = self.epoch_step * size + torch.arange(len(x))  # in this rank's share
            loss, meta_loss = self._train_step(x, idx, sampler.padding(positions))
            losses.append(loss)
            if meta_loss is not None:
                meta_losses.append(meta_loss)
            parts.append(c.pretext.loss_parts())
            seen += len(x)
            self.epoch_step += 1
            self.step += 1
            self.loggers.log_step(self.step, {"loss": loss, "meta_loss": c.meta.last_meta_loss,
                                              "mean_weight": c.meta.last_mean_weight})
            bar.set_postfix(loss=f"{loss:.3f}", meta=f"{c.meta.last_meta_loss:.3f}",
                            w=f"{c.meta.last_mean_weight:.3f}")
            signum = pending_signal(self)
            if signum:
                self._partial = {"losses": losses, "meta_losses": meta_losses, "seen": seen,
                                 "parts": parts,
                                 "seconds": seconds + time.perf_counter() - start}
                self._save(best=False)
                raise Interrupted(self.run_dir, self.epoch, self.epoch_step, signum)
        seconds += time.perf_counter() - start  # an interrupted epoch's part included
        self.train_seconds += seconds
        self.images_seen += seen
        self._partial, self.epoch_step = {}, 0
        return self._end_epoch(losses, meta_losses, seconds, parts)

    def _train_step(self, x: torch.Tensor, idx: torch.Tensor,
                    padding: torch.Tensor) -> tuple[float, float | None]:
        c = self.c
        x = x.to(c.device, non_blocking=True)
        if c.augment is not None:  # pretext.augment: per-image random augmentation
            x = c.augment(x)
        b = c.pretext.batch(x)
        loss_fn = b.loss_fn
        scale = None
        if c.pruner is not None and c.pruner.soft:
            scale = c.pruner.loss_scale(idx)
        if padding.any():  # the sampler's padding (equal shares under torchrun): weight 0
            scale = (torch.ones(len(idx)) if scale is None else scale) * (~padding).float()
        if scale is not None:
            scale = scale.to(c.device).repeat_interleave(b.copies)

            def loss_fn(out: Any, inner: Any = b.loss_fn, scale: torch.Tensor = scale) -> Any:
                return inner(out) * scale

        episodes = c.meta.episodes
        loss = float(c.meta.backward(b.inputs, loss_fn, idx, copies=b.copies))
        if any_rank(not math.isfinite(loss)):
            last = self.rundir.checkpoint_path("last")
            how = (f"nothing after the last checkpoint ({last}) was kept. Lower train.lr "
                   f"(betaweighter run --resume {self.run_dir} --set train.lr=...)"
                   if last.is_file() else "no checkpoint was written yet. Start the run "
                   "again with a lower train.lr")
            raise NonFiniteLossError(
                f"the training loss became {loss} at epoch {self.epoch + 1}, step "
                f"{self.epoch_step + 1} of the epoch; {how} or use train.precision=fp32")
        if c.scaler is not None:
            c.scaler.step(c.optimizer)
            c.scaler.update()
        else:
            c.optimizer.step()
        c.optimizer.zero_grad(set_to_none=True)
        c.pretext.after_step()
        return loss, (c.meta.last_meta_loss if c.meta.episodes > episodes else None)

    def _end_epoch(self, losses: list[float], meta_losses: list[float],
                   seconds: float, parts: list[dict[str, float]] | None = None
                   ) -> dict[str, Any]:
        c, cfg = self.c, self.cfg
        lr = c.optimizer.param_groups[0]["lr"]
        c.scheduler.step()
        record = c.pruner.step() if c.pruner is not None else {}
        self.epoch += 1
        if c.pruner is None or c.pruner.scoring:  # a scored budget's weights are final
            start = time.perf_counter()
            c.weights.on_epoch_end(self.epoch, c.pretext)  # NN distances, re-clustering
            refit = time.perf_counter() - start  # part of the training's cost
            seconds += refit
            self.train_seconds += refit
        mean_w = c.weights.mean().detach().float().cpu().numpy()
        self.histograms.append(np.histogram(mean_w, bins=plots.HIST_BINS)[0])
        val = self._validate() if self._evaluate_now() else math.nan
        kept = c.pruner.kept_fraction if c.pruner is not None else 1.0
        row = {
            "epoch": self.epoch, "train_loss": _mean(losses), "meta_loss": _mean(meta_losses),
            "mean_weight": float(mean_w.mean()),
            **diagnostics.weight_diagnostics(c.weights, c.meta, cfg.pruning.epsilon,
                                             cfg.pruning.delta, c.bundle.in_domain, c.pruner,
                                             kinds=c.bundle.info.get("kinds")),
            "val_accuracy": val, "kept_fraction": record.get("kept_fraction", kept),
            "pruned": record.get("pruned", 0), "decided": record.get("decided_count", 0),
            "pruned_in_domain": record.get("pruned_in_domain"), "epoch_seconds": seconds,
            "images_seen": self.images_seen, "lr": lr,
            "skipped_meta_steps": c.meta.skipped_meta_steps,
            **{f"pretext_{k}": _mean([p[k] for p in parts or [] if k in p])
               for k in dict.fromkeys(k for p in parts or [] for k in p)},
        }
        assert_identical(c.weights, f"the instance weights after epoch {self.epoch}")
        if self.metrics is not None:
            self.metrics.append(row)
            self.loggers.log_epoch(self.epoch, row, mean_w)
        improved = val == val and val > self.best_val
        if improved:
            self.best_val, self.best_epoch = val, self.epoch
        self._save(best=improved)
        return row

    def _evaluate_now(self) -> bool:
        every = self.cfg.evaluate.every
        return is_main() and (self.epoch % every == 0 or self.epoch == self.cfg.train.epochs)

    def _validate(self) -> float:
        """Model selection: the linear probe's best C on target_train -> target_val."""
        c, e = self.c, self.cfg.evaluate
        train = extract_features(c.backbone, c.bundle.target_train, batch_size=e.batch_size,
                                 device=c.device, name="target_train")
        val = extract_features(c.backbone, c.bundle.target_val, batch_size=e.batch_size,
                               device=c.device, name="target_val")
        return float(select_c(train, val, c_values=e.c_grid, max_iter=e.max_iter)["val_score"])

    # -- the end of a run ------------------------------------------------------------------
    def finish(self) -> dict[str, Any] | None:
        """Test accuracy of the best model, summary.json, weights.csv and the plots."""
        if not is_main():
            return None
        return finish_run(self)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan
