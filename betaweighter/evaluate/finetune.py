"""Whole-network fine-tuning with a new linear head, hyperparameters chosen on validation.

Protocol of "How Well Do Self-Supervised Models Transfer?" (arXiv:2011.13377, "many-shot
fine-tuning"): the pre-trained backbone plus a new linear head are trained end to end with
cross-entropy (BatchNorm in training mode), SGD with Nesterov momentum 0.9 and a cosine
schedule to 0 over a fixed number of steps (5000, batch 64), random-resized-crop and flip
augmentation. Every (learning rate, weight decay) pair of a small grid is trained on the
train split from the same pre-trained weights and scored on validation; the best pair is
retrained on train+val and scored once on test. Adam (with the same cosine schedule) is an
option. Unlike the original, the weight decay is used as given (the original divided it by
the learning rate), the grid is a parameter rather than a module-level global, and a
diverging run is recorded rather than crashing the sweep.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader
from tqdm.auto import tqdm

from betaweighter.data.loaders import forever
from betaweighter.evaluate.fusion import FusedBackbone
from betaweighter.evaluate.metrics import METRICS, accuracy, mean_per_class_accuracy
from betaweighter.runtime import eval_mode, module_device, progress_disabled, resolve_device

__all__ = ["FeatureClassifier", "evaluate_finetune", "predict", "train_classifier"]

OPTIMIZERS = ("sgd", "adam")


class FeatureClassifier(nn.Module):
    """``head(backbone.features(x))`` with a new ``nn.Linear`` head; works with any module
    that has ``features(x)`` and leaves the backbone's own head untouched."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone.features(x).flatten(1))  # type: ignore[operator]  # Module.__getattr__


def train_classifier(model: nn.Module, train_set: Any, *, num_classes: int, lr: float,
                     weight_decay: float, steps: int, optimizer: str = "sgd",
                     batch_size: int = 64, momentum: float = 0.9, num_workers: int = 0,
                     device: Any = None, seed: int = 0) -> FeatureClassifier | None:
    """Fine-tune a copy of `model` with a new head for `steps` steps on `train_set`.

    Returns the trained `FeatureClassifier`, or None when the loss became non-finite.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    device = resolve_device(device)
    torch.manual_seed(seed)
    backbone = copy.deepcopy(model).to(device)
    net = FeatureClassifier(backbone, _feature_dim(backbone, train_set, device), num_classes)
    net.to(device).train()
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            net.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0,
            weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    # The last partial batch is dropped so that BatchNorm never sees a batch of one.
    loader = DataLoader(train_set, batch_size=min(batch_size, len(train_set)), shuffle=True,
                        drop_last=True, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(seed),
                        pin_memory=device.type == "cuda")
    batches = forever(loader)
    for _ in tqdm(range(steps), desc=f"fine-tune lr={lr:g} wd={weight_decay:g}",
                  disable=progress_disabled(), leave=False):
        x, y = next(batches)
        loss = F.cross_entropy(net(x.to(device)), y.to(device))
        if not torch.isfinite(loss):
            return None
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    return net.eval()


@torch.no_grad()
def predict(net: nn.Module, dataset: Any, *, batch_size: int = 64, num_workers: int = 0,
            device: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted labels) for every item of `dataset`, in eval mode, on `device`
    (default: where `net` is)."""
    device = module_device(net) if device is None else resolve_device(device)
    net.to(device)
    net.eval()
    labels, preds = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        preds.append(net(x.to(device)).argmax(1).cpu().numpy())
        labels.append(torch.as_tensor(y).reshape(-1).numpy())
    return np.concatenate(labels), np.concatenate(preds)


def evaluate_finetune(model: nn.Module, train_set: Any, val_set: Any, test_set: Any, *,
             num_classes: int, lrs: tuple[float, ...] | list[float] = (0.1, 0.01, 0.001),
             weight_decays: tuple[float, ...] | list[float] = (0.0, 1e-4),
             steps: int = 5000, optimizer: str = "sgd", batch_size: int = 64,
             momentum: float = 0.9, metric: str = "top1", refit: bool = True,
             trainval_set: Any = None, num_workers: int = 0, device: Any = None,
             seed: int = 0) -> dict[str, Any]:
    """Grid-search (lr, weight decay) on validation, then score the best setting on test.

    `train_set` should carry the training augmentation, `val_set` and `test_set` the
    evaluation transform. With `refit`, the best setting is retrained on `trainval_set`
    (default: train_set and val_set concatenated) before testing; otherwise the network
    trained on train alone is tested. Returns test ``top1`` and
    ``mean_per_class_accuracy``, the chosen ``lr`` and ``weight_decay`` and every grid
    run's validation score (None for a diverged run).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    if isinstance(model, FusedBackbone) and not model.trainable:
        raise TypeError(
            "fine-tuning a fused backbone is off: the fusion of arXiv:2111.11398 combines "
            "frozen features, and this one is frozen (only a new head would train). Use the "
            "linear or few-shot evaluators, or build it with fuse(..., trainable=True) to "
            "fine-tune all members jointly")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    common = dict(num_classes=num_classes, steps=steps, optimizer=optimizer,
                  batch_size=batch_size, momentum=momentum, num_workers=num_workers,
                  device=device, seed=seed)
    grid, best = [], None
    for lr, wd in itertools.product(lrs, weight_decays):
        net = train_classifier(model, train_set, lr=lr, weight_decay=wd, **common)
        score = None
        if net is not None:
            score = METRICS[metric](*predict(net, val_set, batch_size=batch_size,
                                             num_workers=num_workers, device=device))
            if best is None or score > best[0]:
                best = (score, lr, wd, net)
        grid.append({"lr": lr, "weight_decay": wd, "val_score": score})
    if best is None:
        raise RuntimeError(f"every fine-tuning run diverged (grid {grid}); try smaller lrs")
    _, lr, wd, net = best
    if refit:
        trainval = trainval_set if trainval_set is not None else ConcatDataset(
            [train_set, val_set])
        net = train_classifier(model, trainval, lr=lr, weight_decay=wd, **common)
        if net is None:
            raise RuntimeError(f"fine-tuning on train+val diverged at lr={lr}, wd={wd}")
    y, pred = predict(net, test_set, batch_size=batch_size, num_workers=num_workers,
                      device=device)
    return {"top1": accuracy(y, pred), "mean_per_class_accuracy": mean_per_class_accuracy(y, pred),
            "metric": metric, "lr": lr, "weight_decay": wd, "val_score": best[0],
            "grid": grid, "steps": steps, "optimizer": optimizer, "refit": refit,
            "n_test": int(y.size)}


def _feature_dim(backbone: nn.Module, dataset: Any, device: torch.device) -> int:
    if not callable(getattr(backbone, "features", None)):
        raise TypeError(f"fine-tuning needs a backbone with features(x); "
                        f"{type(backbone).__name__} has none")
    x = torch.as_tensor(dataset[0][0]).unsqueeze(0).to(device)
    with eval_mode(backbone), torch.no_grad():
        dim = backbone.features(x).flatten(1).shape[1]  # type: ignore[operator]  # Module.__getattr__
    return int(dim)
