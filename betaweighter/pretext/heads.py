"""The small MLPs that contrastive and self-distillation methods put on the backbone.

SimCLR (Chen et al., ICML 2020) and MoCo v2 (Chen et al., arXiv:2003.04297) train through a
projection head; BYOL (Grill et al., NeurIPS 2020) and SimSiam (Chen and He, CVPR 2021) add
a predictor on the online side. Both are Linear-BatchNorm-ReLU blocks ending in a Linear
layer (SimSiam's projector also normalises its output). The evaluators never see them: the
representation is the backbone's ``features``.
"""

from __future__ import annotations

from torch import nn

__all__ = ["mlp_head"]


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, *, layers: int = 2,
             batch_norm: bool = True, last_batch_norm: bool = False) -> nn.Sequential:
    """``layers`` Linear layers: (Linear-[BN]-ReLU) x (layers - 1), then Linear[-BN]."""
    for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim),
                        ("layers", layers)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    blocks: list[nn.Module] = []
    width = int(in_dim)
    for _ in range(int(layers) - 1):
        blocks.append(nn.Linear(width, int(hidden_dim), bias=not batch_norm))
        if batch_norm:
            blocks.append(nn.BatchNorm1d(int(hidden_dim)))
        blocks.append(nn.ReLU(inplace=True))
        width = int(hidden_dim)
    blocks.append(nn.Linear(width, int(out_dim), bias=not last_batch_norm))
    if last_batch_norm:
        blocks.append(nn.BatchNorm1d(int(out_dim), affine=False))
    return nn.Sequential(*blocks)
