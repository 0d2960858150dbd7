"""What a resumed run may change: a moved dataset, more epochs, a new learning rate,
device or precision. Everything else must stay as the checkpoint was made."""

from __future__ import annotations

import logging
from typing import Any

from betaweighter.errors import ConfigError
from betaweighter.experiment.config import Config, dump_config, load_config, parse_override
from betaweighter.experiment.rundir import RunDir
from betaweighter.io import atomic_write_text, write_json

_log = logging.getLogger(__name__)  # under "betaweighter": the CLI prints its records

__all__ = ["RESUME_OVERRIDES", "apply_resume_overrides", "fixed_part", "record_changes"]

#: Config keys that `betaweighter run --resume RUN --set KEY=VALUE` (or an edit of the
#: run's config.yaml) may change.
RESUME_OVERRIDES = ("data.root", "data.pool_root", "data.target_root", "data.workers",
                    "train.epochs", "train.lr", "train.device", "train.precision")


def fixed_part(config: dict[str, Any]) -> dict[str, Any]:
    """A config without the keys a resume may change."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for key in RESUME_OVERRIDES:
        section, name = key.split(".")
        out.get(section, {}).pop(name, None)
    return out


def apply_resume_overrides(cfg: Config, overrides: list[str],
                            state: dict[str, Any]) -> tuple[Config, list[tuple[str, Any, Any]]]:
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key not in RESUME_OVERRIDES:
            raise ConfigError(f"--set {key} cannot change on --resume (the run would no longer "
                              f"be the one it was); allowed: {', '.join(RESUME_OVERRIDES)}")
    new = load_config(base=cfg.to_dict(), overrides=overrides)
    old_d, new_d = state["config"], new.to_dict()  # what the checkpoint was made with
    changes = []
    for key in RESUME_OVERRIDES:
        section, name = key.split(".")
        if old_d[section][name] != new_d[section][name]:
            changes.append((key, old_d[section][name], new_d[section][name]))
    if new.train.epochs < state["epoch"]:
        raise ConfigError(f"config key 'train.epochs': the run has already trained "
                          f"{state['epoch']} epochs; give at least that many")
    return new, changes


def rescale_learning_rate(optimizer: Any, scheduler: Any, lr: float) -> None:
    """After loading the optimiser and schedule state, apply a changed ``train.lr`` by
    rescaling every group and the schedule's base rates proportionally (all the schedules
    of the config are proportional to the base rate)."""
    base = scheduler.base_lrs[0]
    if base == lr:
        return
    factor = lr / base
    scheduler.base_lrs = [b * factor for b in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["lr"] *= factor
        group["initial_lr"] = group.get("initial_lr", base) * factor


def check_moved_data(info: dict[str, Any], bundle: Any,
                     changes: list[tuple[str, Any, Any]]) -> None:
    """When a resume points the data elsewhere, the data there must be the run's: same
    sizes and sampled items as recorded in run.json (a note is logged, else ConfigError)."""
    from betaweighter.experiment.diagnostics import data_fingerprint

    moved = [c for c in changes if c[0] in ("data.root", "data.pool_root", "data.target_root")]
    if not moved:
        return
    before, now = info.get("data"), data_fingerprint(bundle)
    if before is not None and before != now:
        differ = sorted(k for k in now if before.get(k) != now.get(k))
        raise ConfigError(f"the data at {moved[0][2]} differs from the run's "
                          f"({', '.join(differ)}): resume with the data the run was started on")
    for key, old, new in moved:
        _log.info("note: %s moved from %s to %s; the data there matches the run's (sizes "
                  "and sampled items)", key, old, new)


def record_changes(run: RunDir, cfg: Config, changes: list[tuple[str, Any, Any, int]]
                   ) -> list[tuple[str, Any, Any, int]]:
    """Write the settings changed on resume (key, old, new, epoch) into config.yaml and
    run.json; the trainer calls it just before the first checkpoint made with them, so that
    a resume that fails first (a diverging learning rate, a wrong path) leaves the run as it
    was. Returns what is left to record: nothing."""
    if changes:
        info = run.info()
        info.setdefault("changes", []).extend(
            {"key": k, "from": old, "to": new, "at_epoch": epoch}
            for k, old, new, epoch in changes)
        write_json(run.path / "run.json", info)
        atomic_write_text(run.path / "config.yaml", dump_config(cfg))
    return []
