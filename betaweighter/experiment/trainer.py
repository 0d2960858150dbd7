"""The training recipe: a pretext task with instance weights and pruning, a linear probe on
the target's validation split after each epoch, the best checkpoint kept, and the test
accuracy of the best model at the end (Ericsson et al., arXiv:2006.12360, section 4).

A `Trainer` owns its run directory for its whole life: it holds the directory's writer
lock, writes every file atomically (on rank 0 only, under torchrun), checkpoints every
epoch, stops cleanly at a step boundary on Ctrl-C (leaving a checkpoint of that step), and
stops at once with `NonFiniteLossError` when the loss stops being finite.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from betaweighter import __version__
from betaweighter.checkpoint import rng_state, save_checkpoint, set_rng_state
from betaweighter.errors import CheckpointError, ConfigError, NonFiniteLossError
from betaweighter.evaluate.features import extract_features
from betaweighter.evaluate.linear import linear_probe, select_c
from betaweighter.experiment import diagnostics, plots
from betaweighter.experiment.config import Config, dump_config, load_config
from betaweighter.experiment.factory import Components, build
from betaweighter.experiment.metrics import MetricsLog
from betaweighter.experiment.rundir import RunDir, create_run_dir
from betaweighter.io import atomic_write_text, write_json
from betaweighter.runtime import is_main, progress_disabled

__all__ = ["Interrupted", "RESUME_OVERRIDES", "Trainer"]

#: Config keys that `betaweighter run --resume RUN --set KEY=VALUE` may change.
RESUME_OVERRIDES = ("data.root", "data.pool_root", "data.target_root", "data.workers",
                    "train.epochs", "train.lr", "train.device", "train.precision")


class Interrupted(Exception):
    """Training stopped on SIGINT after a checkpoint of the last completed step."""

    def __init__(self, run_dir: Path, epoch: int, step: int) -> None:
        self.run_dir, self.epoch, self.step = run_dir, epoch, step
        super().__init__(f"interrupted; resume with: betaweighter run --resume {run_dir}")


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
        self._exit.enter_context(self.rundir.lock())
        try:
            self.c: Components = build(cfg, splits=splits)
        except BaseException:
            self._exit.close()
            raise
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
        self._stop_requested = False
        self.metrics = MetricsLog(self.run_dir / "metrics.csv") if is_main() else None

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def start(cls, cfg: Config) -> Trainer:
        """A new run in a fresh directory under ``experiment.output_root``. If building the
        data or the components fails (a missing dataset, a bad option), the directory is
        removed again, so a corrected retry gets the same name."""
        import shutil

        run_dir = create_run_dir(cfg.experiment.output_root, cfg.experiment.name)
        try:
            trainer = cls(cfg, run_dir)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        if is_main():
            bundle = trainer.c.bundle
            bundle.save_splits(run_dir / "splits.json")
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            write_json(run_dir / "run.json", {
                "betaweighter": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "command": sys.argv, "data": diagnostics.data_fingerprint(bundle),
                "data_config": trainer.data_config, "changes": []})
        return trainer

    @classmethod
    def resume(cls, run_dir: str | Path, which: str = "last",
               overrides: list[str] | None = None) -> Trainer:
        """Continue a run from ``checkpoints/<which>.pt`` with its own config. `overrides`
        (``KEY=VALUE``) may change only `RESUME_OVERRIDES`: a moved dataset (its content
        is checked against the run's), more epochs, a new learning rate, device or
        precision. Each change is recorded in run.json."""
        run = RunDir(run_dir)
        saved = run.config()
        state = run.state(which)
        if state["config"] != saved.to_dict():
            raise CheckpointError(f"checkpoint {run.checkpoint_path(which)} was written with "
                                  f"another config than {run.config_path}: restore the "
                                  "original config.yaml, or start a new run")
        cfg, changes = _apply_resume_overrides(saved, overrides or [], state)
        splits = run.path / "splits.json"
        trainer = cls(cfg, run.path, splits=splits if splits.is_file() else None)
        try:
            trainer._check_data(run.info(), changes)
            trainer._load(state, which)
            if changes and is_main():
                trainer._record_changes(run, changes)
        except BaseException:
            trainer.close()
            raise
        return trainer

    def close(self) -> None:
        """Release the run's lock."""
        self._exit.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def data_config(self) -> dict[str, Any]:
        """The input the backbone is trained on: evaluation defaults read it."""
        b = self.c.bundle
        return {"dataset": b.name, "image_size": int(b.image_size), "mean": list(b.mean),
                "std": list(b.std)}

    # -- state -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        c = self.c
        extra = {k: v for k, v in c.pretext.state_dict().items()
                 if not k.startswith("backbone.")}
        return {
            "model": c.backbone.state_dict(), "model_config": c.model_config,
            "data_config": self.data_config, "pretext": extra,
            "optimizer": c.optimizer.state_dict(), "scheduler": c.scheduler.state_dict(),
            "scaler": None if c.scaler is None else c.scaler.state_dict(),
            "num_instances": c.weights.num_instances,
            "weights": c.weights.state_dict(), "meta": c.meta.state_dict(),
            "pruner": None if c.pruner is None else c.pruner.state_dict(),
            "epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step,
            "partial": dict(self._partial), "images_seen": self.images_seen,
            "train_seconds": self.train_seconds, "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "histograms": [h.tolist() for h in self.histograms],
            "metrics": list(self.metrics.rows) if self.metrics else [],
            "config": self.cfg.to_dict(), "rng": rng_state(),
        }

    def _load(self, s: dict[str, Any], which: str) -> None:
        c, path = self.c, self.rundir.checkpoint_path(which)
        try:
            backbone = {f"backbone.{k}": v for k, v in s["model"].items()}
            c.pretext.load_state_dict({**backbone, **s.get("pretext", {})})
            c.optimizer.load_state_dict(s["optimizer"])
            c.scheduler.load_state_dict(s["scheduler"])
            if c.scaler is not None and s.get("scaler"):
                c.scaler.load_state_dict(s["scaler"])
            c.weights.load_state_dict(s["weights"])
            c.meta.load_state_dict(s["meta"])
            if c.pruner is not None:  # a run extended by more epochs has a longer schedule
                c.pruner.load_state_dict(s["pruner"], ("total_epochs", "anneal_epochs"))
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {path} does not match this run's model or "
                                  f"weights ({str(e).splitlines()[0]}); start a new run"
                                  ) from None
        self._apply_lr_change()
        self.epoch, self.epoch_step, self.step = s["epoch"], s["epoch_step"], s["step"]
        self._partial = dict(s.get("partial") or {})
        self.images_seen, self.train_seconds = s["images_seen"], s["train_seconds"]
        self.best_val, self.best_epoch = s["best_val"], s["best_epoch"]
        self.histograms = [np.asarray(h) for h in s["histograms"]]
        if is_main():
            self.metrics = MetricsLog(self.run_dir / "metrics.csv", s["metrics"])
        if self.epoch_step:
            self._pending_rng = s["rng"]  # applied once the epoch's loader is rebuilt
        else:
            set_rng_state(s["rng"])

    def _apply_lr_change(self) -> None:
        """After loading the optimiser state, apply a changed ``train.lr`` (resume
        override) by rescaling every schedule proportionally."""
        groups, sched = self.c.optimizer.param_groups, self.c.scheduler
        base = sched.base_lrs[0]
        if base != self.cfg.train.lr:
            factor = self.cfg.train.lr / base
            sched.base_lrs = [b * factor for b in sched.base_lrs]
            for g in groups:
                g["lr"] *= factor
                g["initial_lr"] = g.get("initial_lr", base) * factor

    def _check_data(self, info: dict[str, Any], changes: list[tuple[str, Any, Any]]) -> None:
        moved = [c for c in changes if c[0] in ("data.root", "data.pool_root",
                                                "data.target_root")]
        if not moved:
            return
        before = info.get("data")
        now = diagnostics.data_fingerprint(self.c.bundle)
        if before is not None and before != now:
            differ = sorted(k for k in now if before.get(k) != now.get(k))
            raise ConfigError(f"the data at {moved[0][2]} differs from the run's "
                              f"({', '.join(differ)}): resume with the data the run was "
                              "started on")
        for key, old, new in moved:
            print(f"note: {key} moved from {old} to {new}; the data there matches the run's "
                  "(sizes and sampled items)", file=sys.stderr)

    def _record_changes(self, run: RunDir, changes: list[tuple[str, Any, Any]]) -> None:
        info = run.info()
        info.setdefault("changes", []).extend(
            {"key": k, "from": old, "to": new, "at_epoch": self.epoch}
            for k, old, new in changes)
        write_json(self.run_dir / "run.json", info)
        atomic_write_text(self.run_dir / "config.yaml", dump_config(self.cfg))

    def _save(self, best: bool) -> None:
        if not is_main():
            return
        state = self._state()
        save_checkpoint(self.rundir.checkpoint_path("last"), state)
        if best:
            save_checkpoint(self.rundir.checkpoint_path("best"), state)

    # -- the recipe ----------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> dict[str, Any] | None:
        """Train to the end (from where the run stands) and `finish`. Returns the summary
        (None on ranks other than 0, or when `stop_after` stopped it early)."""
        epochs = self.cfg.train.epochs
        bar = tqdm(range(self.epoch, epochs), desc=self.run_dir.name,
                   disable=progress_disabled(), initial=self.epoch, total=epochs)
        with _stop_on_sigint(self):
            for _ in bar:
                row = self._train_epoch()
                bar.set_postfix(loss=f"{row['train_loss']:.3f}",
                                val=f"{row['val_accuracy']:.3f}",
                                kept=f"{row['kept_fraction']:.2f}")
                if stop_after is not None and self.epoch >= stop_after and self.epoch < epochs:
                    return None
        return self.finish()

    def _loader(self) -> Any:
        c, cfg = self.c, self.cfg
        kwargs = {"num_workers": cfg.data.workers, "pin_memory": c.device.type == "cuda",
                  "persistent_workers": cfg.data.workers > 0}
        if c.pruner is not None:
            return c.pruner.loader(c.bundle.pool, batch_size=cfg.train.batch_size, **kwargs)
        if not hasattr(self, "_full_loader"):
            from betaweighter.pruning import unpruned_loader

            self._full_loader = unpruned_loader(c.bundle.pool, lambda: self.epoch,
                                                cfg.train.batch_size, cfg.experiment.seed,
                                                **kwargs)
        return self._full_loader

    def _train_epoch(self) -> dict[str, Any]:
        c, cfg = self.c, self.cfg
        loader = self._loader()
        sampler = loader.sampler
        sampler.start = self.epoch_step * cfg.train.batch_size
        limit = cfg.train.max_steps_per_epoch
        total = len(loader) if limit is None else min(len(loader), limit)
        p = self._partial
        losses, meta_losses = p.get("losses", []), p.get("meta_losses", [])
        seen, seconds = p.get("seen", 0), p.get("seconds", 0.0)
        c.model.train()
        batches = iter(loader)
        sampler.start = 0
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None
        bar = tqdm(batches, desc=f"epoch {self.epoch + 1}", disable=progress_disabled(),
                   leave=False, total=total, initial=self.epoch_step)
        start = time.perf_counter()
        for x, idx in bar:
            if limit is not None and self.epoch_step >= limit:
                break
            loss, meta_loss = self._train_step(x, idx)
            losses.append(loss)
            if meta_loss is not None:
                meta_losses.append(meta_loss)
            seen += len(x)
            self.epoch_step += 1
            self.step += 1
            bar.set_postfix(loss=f"{loss:.3f}", meta=f"{c.meta.last_meta_loss:.3f}",
                            w=f"{c.meta.last_mean_weight:.3f}")
            if self._stop_requested:
                self._partial = {"losses": losses, "meta_losses": meta_losses, "seen": seen,
                                 "seconds": seconds + time.perf_counter() - start}
                self._save(best=False)
                raise Interrupted(self.run_dir, self.epoch, self.epoch_step)
        seconds += time.perf_counter() - start
        self.train_seconds += seconds - p.get("seconds", 0.0)
        self.images_seen += seen - p.get("seen", 0)
        self._partial, self.epoch_step = {}, 0
        return self._end_epoch(losses, meta_losses, seconds)

    def _train_step(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[float, float | None]:
        c = self.c
        x = x.to(c.device, non_blocking=True)
        if c.augment is not None:  # pretext.augment: per-image random augmentation
            x = c.augment(x)
        b = c.pretext.batch(x)
        loss_fn = b.loss_fn
        if c.pruner is not None and c.pruner.soft:
            scale = c.pruner.loss_scale(idx).to(c.device).repeat_interleave(b.copies)

            def loss_fn(out: Any, inner: Any = b.loss_fn, scale: torch.Tensor = scale) -> Any:
                return inner(out) * scale

        meta_steps = c.meta.meta_steps
        loss = float(c.meta.backward(b.inputs, loss_fn, idx, copies=b.copies))
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss became {loss} at epoch {self.epoch + 1}, step "
                f"{self.epoch_step + 1} of the epoch; nothing after the last checkpoint "
                f"({self.rundir.checkpoint_path('last')}) was kept. Lower train.lr (betaweighter "
                f"run --resume {self.run_dir} --set train.lr=...) or use train.precision=fp32")
        if c.scaler is not None:
            c.scaler.step(c.optimizer)
            c.scaler.update()
        else:
            c.optimizer.step()
        c.optimizer.zero_grad(set_to_none=True)
        c.pretext.after_step()
        return loss, (c.meta.last_meta_loss if c.meta.meta_steps > meta_steps else None)

    def _end_epoch(self, losses: list[float], meta_losses: list[float],
                   seconds: float) -> dict[str, Any]:
        c, cfg = self.c, self.cfg
        lr = c.optimizer.param_groups[0]["lr"]
        c.scheduler.step()
        record = c.pruner.step() if c.pruner is not None else {}
        self.epoch += 1
        c.weights.on_epoch_end(self.epoch, c.pretext)  # e.g. NN-Weighter's distance refresh
        mean_w = c.weights.mean().detach().float().cpu().numpy()
        self.histograms.append(np.histogram(mean_w, bins=plots.HIST_BINS)[0])
        val = self._validate() if self._evaluate_now() else math.nan
        kept = c.pruner.kept_fraction if c.pruner is not None else 1.0
        row = {
            "epoch": self.epoch, "train_loss": _mean(losses), "meta_loss": _mean(meta_losses),
            "mean_weight": float(mean_w.mean()),
            **diagnostics.weight_diagnostics(c.weights, c.meta, cfg.pruning.epsilon,
                                             cfg.pruning.delta, c.bundle.in_domain, c.pruner),
            "val_accuracy": val, "kept_fraction": record.get("kept_fraction", kept),
            "pruned": record.get("pruned", 0), "decided": record.get("decided_count", 0),
            "pruned_in_domain": record.get("pruned_in_domain"), "epoch_seconds": seconds,
            "images_seen": self.images_seen, "lr": lr,
            "skipped_meta_steps": c.meta.skipped_meta_steps,
        }
        if self.metrics is not None:
            self.metrics.append(row)
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
        c, cfg = self.c, self.cfg
        best = self.rundir.checkpoint_path("best")
        if best.is_file():
            model = self.rundir.state("best")["model"]
            c.backbone.load_state_dict(model)
        e = cfg.evaluate
        probe = linear_probe(c.backbone, c.bundle.target_train, c.bundle.target_val,
                             c.bundle.test, batch_size=e.batch_size, device=c.device,
                             max_iter=e.max_iter, c_values=e.final_c_grid)
        rows = self.metrics.rows
        summary = {
            "run": self.run_dir.name, "method": cfg.weights.method, "pretext": cfg.pretext.name,
            "pruning": cfg.pruning.rule if cfg.pruning.enabled else None,
            "dataset": c.bundle.name, "epochs": self.epoch, "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val, "test_accuracy": probe["top1"],
            "test_mean_per_class_accuracy": probe["mean_per_class_accuracy"],
            "probe_C": probe["C"], "calibration": probe["calibration"],
            "kept_fraction": rows[-1]["kept_fraction"] if rows else 1.0,
            "pruned_in_domain_share": rows[-1].get("pruned_in_domain_share") if rows else None,
            "auroc_in_domain": rows[-1].get("auroc_in_domain") if rows else None,
            "train_seconds": self.train_seconds, "images_seen": self.images_seen,
        }
        write_json(self.run_dir / "summary.json", summary)
        pruned = c.pruner.pruned if c.pruner is not None else np.zeros(c.weights.num_instances,
                                                                       bool)
        atomic_write_text(self.run_dir / "weights.csv",
                          diagnostics.weights_table(c.weights, pruned))
        plots.save_extremes(self.run_dir / "plots" / "extremes.npz", c.weights, c.bundle)
        plots.draw_run_plots(self.rundir)
        return summary


def format_summary(summary: dict[str, Any], run_dir: Path) -> str:
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


def _apply_resume_overrides(cfg: Config, overrides: list[str],
                            state: dict[str, Any]) -> tuple[Config, list[tuple[str, Any, Any]]]:
    from betaweighter.experiment.config import parse_override

    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key not in RESUME_OVERRIDES:
            raise ConfigError(f"--set {key} cannot change on --resume (the run would no longer "
                              f"be the one it was); allowed: {', '.join(RESUME_OVERRIDES)}")
    new = load_config(base=cfg.to_dict(), overrides=overrides)
    old_d, new_d = cfg.to_dict(), new.to_dict()
    changes = []
    for key in RESUME_OVERRIDES:
        section, name = key.split(".")
        if old_d[section][name] != new_d[section][name]:
            changes.append((key, old_d[section][name], new_d[section][name]))
    if new.train.epochs < state["epoch"]:
        raise ConfigError(f"config key 'train.epochs': the run has already trained "
                          f"{state['epoch']} epochs; give at least that many")
    return new, changes


@contextlib.contextmanager
def _stop_on_sigint(trainer: Trainer):
    """Turn the first Ctrl-C into a request to stop after the current step (the trainer
    checkpoints it and raises `Interrupted`); a second Ctrl-C interrupts at once."""
    if not hasattr(signal, "SIGINT") or not _in_main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if trainer._stop_requested:
            raise KeyboardInterrupt
        trainer._stop_requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan
