"""Many-shot linear probe on frozen features, with its calibration.

Protocol of "How Well Do Self-Supervised Models Transfer?" (Ericsson et al., CVPR 2021,
arXiv:2011.13377, section "many-shot linear"): features are extracted once from the frozen
backbone; a multinomial logistic regression (scikit-learn, L-BFGS) is fitted on the train
split for each inverse regularisation C of a log grid (wd = 1/C from 1e-6 to 1e5, 45
values, largest C first, warm-started along the grid); the C with the best validation
score (the first one on ties) is refitted on train+val and scored once on test.

Fixes over the original code: accuracies are exact over the whole split (no per-batch
averaging, no dropped remainder), the iteration cap is a parameter (default 1000 instead
of a silent 100) and the number of fits that hit it is reported, classes missing from the
training split are an error instead of a silently shifted label space, and calibration
fits its temperature on validation, not on test.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from betaweighter.evaluate.calibration import calibration_report
from betaweighter.evaluate.features import extract_features
from betaweighter.evaluate.fusion import FusedBackbone
from betaweighter.evaluate.metrics import METRICS, accuracy, mean_per_class_accuracy
from betaweighter.runtime import progress_disabled

__all__ = ["default_c_grid", "fit_linear_probe", "linear_probe", "select_c"]

Split = tuple[np.ndarray, np.ndarray]


def default_c_grid(num: int = 45, min_wd: float = 1e-6, max_wd: float = 1e5,
                   shift: int = 0) -> np.ndarray:
    """The paper's grid of C = 1/wd, wd log-spaced from `min_wd` to `max_wd`, so C runs
    from 1e6 down to 1e-5 (weak to strong regularisation). `shift` c moves both ends by
    a factor 100^c, as Ericsson et al. (arXiv:2111.11398) do for the fusion of c + 1
    models: wd from 1e(-6 + 2c) to 1e(5 + 2c)."""
    factor = 100.0 ** shift
    return 1.0 / np.logspace(np.log10(min_wd * factor), np.log10(max_wd * factor), num)


def fit_linear_probe(train: Split, val: Split, test: Split, *,
                     c_values: np.ndarray | list[float] | None = None, metric: str = "top1",
                     max_iter: int = 1000, standardize: bool = False,
                     calibration_bins: int = 15) -> dict[str, Any]:
    """Select C on `val`, refit on train+val, score on `test`; each split is (X, y).

    Returns a dict with ``top1`` and ``mean_per_class_accuracy`` on test, the selected
    ``C``, the validation ``metric`` for every C (``val_scores``), ``not_converged`` (how
    many fits hit `max_iter`) and ``calibration`` (see `calibration_report`; computed for
    the classifier fitted on train alone at the selected C, because the temperature must
    be fitted on data that classifier has not seen).
    """
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (_as_split(s, n) for s, n in
                                                ((train, "train"), (val, "val"), (test, "test")))
    _check_label_space(y_tr, {"val": y_va, "test": y_te})
    scaler = StandardScaler().fit(x_tr) if standardize else None
    f_va, f_te = _scale(scaler, x_va), _scale(scaler, x_te)
    search = _grid_search(_scale(scaler, x_tr), y_tr, f_va, y_va, c_values, metric, max_iter)
    best_c, best_score, best_clf = search["C"], search["val_score"], search.pop("classifier")
    not_converged = search["not_converged"]
    calibration = calibration_report(_logits(best_clf, f_va), _index_of(best_clf, y_va),
                                     _logits(best_clf, f_te), _index_of(best_clf, y_te),
                                     n_bins=calibration_bins)
    x_all, y_all = np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va])
    scaler = StandardScaler().fit(x_all) if standardize else None
    final = LogisticRegression(solver="lbfgs", C=best_c, max_iter=max_iter)
    not_converged += _fit(final, _scale(scaler, x_all), y_all)
    predictions = final.predict(_scale(scaler, x_te))
    return {
        "top1": accuracy(y_te, predictions),
        "mean_per_class_accuracy": mean_per_class_accuracy(y_te, predictions),
        "metric": metric,
        "C": best_c,
        "val_score": float(best_score),
        "val_scores": search["val_scores"],
        "not_converged": not_converged,
        "calibration": calibration,
        "num_classes": int(np.unique(y_tr).size),
        "feature_dim": int(x_tr.shape[1]),
        "n_train": int(y_tr.size), "n_val": int(y_va.size), "n_test": int(y_te.size),
    }


def select_c(train: Split, val: Split, *, c_values: np.ndarray | list[float] | None = None,
             metric: str = "top1", max_iter: int = 1000) -> dict[str, Any]:
    """Model selection only: fit on `train` for each C and score on `val`, nothing else
    (no refit, no calibration). Returns ``C``, ``val_score``, ``val_scores`` and
    ``not_converged``. The trainer calls it after every epoch to pick the best checkpoint;
    the full `fit_linear_probe` runs once at the end."""
    (x_tr, y_tr), (x_va, y_va) = _as_split(train, "train"), _as_split(val, "val")
    _check_label_space(y_tr, {"val": y_va})
    out = _grid_search(x_tr, y_tr, x_va, y_va, c_values, metric, max_iter)
    out.pop("classifier")
    return out


def _grid_search(x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray,
                 c_values: Any, metric: str, max_iter: int) -> dict[str, Any]:
    """Fit along the C grid (largest C first, warm-started) and keep the best on val."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    score = METRICS[metric]
    grid = default_c_grid() if c_values is None else np.asarray(c_values, dtype=np.float64)
    if grid.size == 0 or np.any(grid <= 0) or not np.all(np.isfinite(grid)):
        raise ValueError("c_values must be a non-empty list of positive finite numbers")
    clf = LogisticRegression(solver="lbfgs", max_iter=max_iter, warm_start=True)
    val_scores, not_converged = [], 0
    best_score, best_c, best_clf = -np.inf, float(grid[0]), None
    for c in tqdm(grid, desc="linear probe C grid", disable=progress_disabled(), leave=False):
        clf.set_params(C=float(c))
        not_converged += _fit(clf, x_tr, y_tr)
        s = score(y_va, clf.predict(x_va))
        val_scores.append({"C": float(c), "score": s})
        if s > best_score:
            best_score, best_c, best_clf = s, float(c), copy.deepcopy(clf)
    return {"C": best_c, "val_score": float(best_score), "val_scores": val_scores,
            "not_converged": not_converged, "classifier": best_clf}


def linear_probe(model: Any, train_set: Any, val_set: Any, test_set: Any, *,
                 batch_size: int = 64, num_workers: int = 0, device: Any = None,
                 cache_dir: Any = None, **probe_options: Any) -> dict[str, Any]:
    """Extract frozen ``model.features`` of the three datasets (each yielding (image,
    label)) once, then run `fit_linear_probe` on them with `probe_options`. A
    `FusedBackbone` of n members gets the paper's grid shifted by n - 1 (`default_c_grid`)
    unless `c_values` is given."""
    if isinstance(model, FusedBackbone) and probe_options.get("c_values") is None:
        probe_options["c_values"] = default_c_grid(shift=model.grid_shift)
    splits = [extract_features(model, ds, batch_size=batch_size, num_workers=num_workers,
                               device=device, cache_dir=cache_dir, name=name)
              for ds, name in ((train_set, "train"), (val_set, "val"), (test_set, "test"))]
    return fit_linear_probe(*splits, **probe_options)


def _as_split(split: Split, name: str) -> Split:
    x, y = np.asarray(split[0], dtype=np.float64), np.asarray(split[1]).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.size or y.size == 0:
        raise ValueError(f"the {name} split needs (N, D) features and N labels with N > 0, "
                         f"got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"the {name} features contain NaN or infinity: the backbone "
                         "diverged or the checkpoint is broken")
    return x, y


def _check_label_space(y_train: np.ndarray, others: dict[str, np.ndarray]) -> None:
    known = set(np.unique(y_train).tolist())
    if len(known) < 2:
        raise ValueError(f"the train split has {len(known)} class; a probe needs at least 2")
    for name, y in others.items():
        unseen = sorted(set(np.unique(y).tolist()) - known)
        if unseen:
            raise ValueError(f"classes {unseen} appear in the {name} split but have no "
                             "training images; add training images or drop those classes")


def _scale(scaler: StandardScaler | None, x: np.ndarray) -> np.ndarray:
    return x if scaler is None else scaler.transform(x)


def _fit(clf: LogisticRegression, x: np.ndarray, y: np.ndarray) -> int:
    """Fit and return 1 when L-BFGS stopped at max_iter (counted, not printed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return int(np.max(clf.n_iter_) >= clf.max_iter)


def _logits(clf: LogisticRegression, x: np.ndarray) -> np.ndarray:
    d = clf.decision_function(x)
    return np.stack([np.zeros_like(d), d], axis=1) if d.ndim == 1 else d


def _index_of(clf: LogisticRegression, y: np.ndarray) -> np.ndarray:
    return np.searchsorted(clf.classes_, y)
