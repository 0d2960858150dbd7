"""The end of a run: the test accuracy of the best epoch's model and of the final one, the
summary, weights.csv and the plots (Ericsson et al., arXiv:2006.12360, section 4: the
model is chosen by validation accuracy, then probed once on the test set)."""

from __future__ import annotations

from typing import Any

from betaweighter.evaluate.linear import linear_probe
from betaweighter.experiment.report import write_report

__all__ = ["finish_run", "summary_of"]

#: per-epoch columns that are not per-kind, though their names start like those
_NOT_KINDS = ("auroc_in_domain", "pruned_in_domain", "pruned_in_domain_share")


def finish_run(trainer: Any) -> dict[str, Any]:
    """Probe, write the report, return the summary (rank 0 only). `trainer` is the
    `Trainer` that calls this (typed loosely: this module sits below it)."""
    c, e = trainer.c, trainer.cfg.evaluate

    def probe(grid: list[float] | None) -> dict[str, Any]:
        return linear_probe(c.backbone, c.bundle.target_train, c.bundle.target_val,
                            c.bundle.test, batch_size=e.batch_size, device=c.device,
                            max_iter=e.max_iter, c_values=grid)

    best = trainer.rundir.checkpoint_path("best")
    final = None  # the last epoch's model (on the selection grid), unless it is the best
    if best.is_file() and trainer.best_epoch != trainer.epoch:
        final = probe(e.c_grid)
        c.backbone.load_state_dict(trainer.rundir.state("best")["model"])
    best_probe = probe(e.final_c_grid)
    summary = summary_of(trainer, best_probe, final or best_probe)
    write_report(trainer.rundir, summary, c.weights, c.pruner, c.bundle)
    plots = sorted((trainer.run_dir / "plots").glob("*.png"))
    trainer.loggers.log_images(trainer.epoch, plots)
    return summary


def summary_of(trainer: Any, best: dict[str, Any], final: dict[str, Any]
               ) -> dict[str, Any]:
    """summary.json: what the run was, its accuracies, what it kept and separated."""
    cfg, c = trainer.cfg, trainer.c
    last = trainer.metrics.rows[-1] if trainer.metrics and trainer.metrics.rows else {}
    return {
        "run": trainer.run_dir.name, "method": cfg.weights.method,
        "pretext": cfg.pretext.name, "pruning": cfg.pruning.rule if cfg.pruning.enabled
        else None, "dataset": c.bundle.name, "epochs": trainer.epoch,
        "best_epoch": trainer.best_epoch, "best_val_accuracy": trainer.best_val,
        "test_accuracy": best["top1"], "final_test_accuracy": final["top1"],
        "test_mean_per_class_accuracy": best["mean_per_class_accuracy"],
        "probe_C": best["C"], "calibration": best["calibration"],
        "final_val_accuracy": last.get("val_accuracy"),
        "kept_fraction": last.get("kept_fraction", 1.0),
        "pruned_in_domain_share": last.get("pruned_in_domain_share"),
        "auroc_in_domain": last.get("auroc_in_domain"),
        "by_kind": {k: v for k, v in last.items()
                    if k.startswith(("auroc_", "pruned_")) and k not in _NOT_KINDS},
        "train_seconds": trainer.train_seconds, "images_seen": trainer.images_seen,
    }
