"""The optimisers and learning-rate schedules a config names (``train.optimizer``,
``train.schedule``): each name is written once, here, beside what it builds; the config
schema takes its choices from these tables and the factory looks the name up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["OPTIMIZERS", "SCHEDULES"]

#: ``train.optimizer`` -> builder(parameters, train section); SGD and RMSprop take the
#: section's momentum, all take its learning rate and weight decay.
OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], Any], torch.optim.Optimizer]] = {
    "sgd": lambda params, t: torch.optim.SGD(params, lr=t.lr, momentum=t.momentum,
                                             weight_decay=t.weight_decay),
    "adam": lambda params, t: torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay),
    "adamw": lambda params, t: torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay),
    "rmsprop": lambda params, t: torch.optim.RMSprop(params, lr=t.lr, momentum=t.momentum,
                                                     weight_decay=t.weight_decay),
}

#: ``train.schedule`` -> builder(optimizer, train section): steps at ``milestones`` by
#: ``gamma``, a cosine over ``epochs``, or a constant rate.
SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, Any], Any]] = {
    "multistep": lambda opt, t: torch.optim.lr_scheduler.MultiStepLR(opt, t.milestones,
                                                                     gamma=t.gamma),
    "cosine": lambda opt, t: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs),
    "constant": lambda opt, t: torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0,
                                                                   total_iters=0),
}
