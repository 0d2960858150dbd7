"""Wrap an ordinary BYOL loop with betaweighter: five added lines.

The loop below is plain PyTorch BYOL (Grill et al., NeurIPS 2020): an online network
(backbone, projector, predictor) predicts the projection that an EMA target network gives
the other view of the same image. The lines marked `# + betaweighter` add a Beta weight
per unlabelled image, judged by a prototypical few-shot loss on labelled images.

The target network needs nothing special. Its projections are computed once per batch
under ``no_grad`` (`bw.pretext.MomentumTarget` is a frozen deep copy) and the loss closes
over them, so `MetaWeighter`'s look-ahead steps the online network only and never runs or
changes the target. The EMA step stays where it was: your own call after
``optimizer.step()``.

    python examples/byol_loop.py          # about a minute on a laptop CPU
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import betaweighter as bw
from betaweighter.models import conv_net
from betaweighter.pretext import MomentumTarget, augment_pairs, byol_loss, two_view_pipelines


def digits(size: int = 16):
    """scikit-learn's digits as 3-channel `size` px images, standardised; and the
    per-channel mean and std that undo it (the augmentations work in [0, 1])."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean, std = float(x.mean()), float(x.std())
    return (x - mean) / std, torch.tensor(d.target), (mean,) * 3, (std,) * 3


def mlp(d_in: int, d_out: int, hidden: int = 64) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, d_out))


class Encoder(nn.Module):
    """Backbone and projector: what the target network copies."""

    def __init__(self, width: int = 16, dim: int = 32) -> None:
        super().__init__()
        self.backbone = nn.Sequential(conv_net(width=width).encoder, nn.Flatten())
        self.projector = mlp(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


class BYOLNet(nn.Module):
    """The online network: encoder and predictor; ``features`` is the representation."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.encoder = Encoder(dim=dim)
        self.predictor = mlp(dim, dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.encoder(x))


def main(epochs: int = 2, pool_size: int | None = None) -> None:
    torch.manual_seed(0)
    x, y, mean, std = digits()
    unlabelled = TensorDataset(x[300:][:pool_size])  # the pool: labels are never used
    labelled = TensorDataset(x[:300], y[:300])       # a small labelled target set
    view_a, view_b = two_view_pipelines("byol", 16, mean, std, jitter_strength=0.5,
                                        min_scale=0.3)

    model = BYOLNet()
    target = MomentumTarget(model.encoder, momentum=0.99)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    pool = bw.data.Indexed(unlabelled)                                            # + betaweighter
    weights = bw.BetaWeights(len(pool))                                           # + betaweighter
    meta = bw.MetaWeighter(model, weights, optimizer, target=labelled,            # + betaweighter
                           objective=bw.PrototypicalLoss(way=5, shot=5, query=5))

    loader = DataLoader(pool, batch_size=32, shuffle=True, drop_last=True)
    for epoch in range(epochs):
        for images, idx in loader:
            views = augment_pairs(images, view_a, view_b)  # rows 2i, 2i + 1: image i
            z_target = target(views)                       # no_grad: constant in this step

            def per_view_loss(p, z_target=z_target):
                return byol_loss(p, z_target)

            loss = meta.backward(views, per_view_loss, idx)  # + betaweighter: was
            # loss = per_view_loss(model(views)).mean(); loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            target.update(model.encoder)                   # the EMA step stays yours
        w = weights.mean()
        print(f"epoch {epoch}: BYOL loss {loss:.3f}, meta loss {meta.last_meta_loss:.3f}, "
              f"mean weight {w.mean():.3f} (min {w.min():.3f}, max {w.max():.3f})")


if __name__ == "__main__":
    main()
