"""Wrap an ordinary SwAV loop with betaweighter: five added lines.

The loop below is plain PyTorch SwAV (Caron et al., NeurIPS 2020): two augmented views of
every image, a projection head, L2-normalised prototypes, Sinkhorn-Knopp codes for each
view, and the swapped prediction (each view predicts the other's code). The lines marked
`# + betaweighter` add a Beta weight per unlabelled image, judged by a prototypical
few-shot loss on labelled images.

The codes need nothing special either. `bw.pretext.SwappedPrediction` is the per-view loss
of one batch: on its first call (the training forward) it runs Sinkhorn on the detached
scores and keeps the codes, so `MetaWeighter`'s second pass over the batch reuses them,
and the meta-gradient is that of the loss with the codes held fixed (as SwAV's backward
holds them). Build one per batch; the prototypes go back onto the sphere after every
``optimizer.step()``, as in SwAV.

    python examples/swav_loop.py          # about a minute on a laptop CPU
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import betaweighter as bw
from betaweighter.models import conv_net
from betaweighter.pretext import SwappedPrediction, augment_pairs, simclr_view


def digits(size: int = 16):
    """scikit-learn's digits as 3-channel `size` px images, standardised; and the
    per-channel mean and std that undo it (the augmentations work in [0, 1])."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean, std = float(x.mean()), float(x.std())
    return (x - mean) / std, torch.tensor(d.target), (mean,) * 3, (std,) * 3


class SwAVNet(nn.Module):
    """A small conv net, SwAV's projection head and prototypes; ``features`` is the
    representation, ``forward`` gives (projections, scores against the prototypes)."""

    def __init__(self, width: int = 16, dim: int = 32, prototypes: int = 20) -> None:
        super().__init__()
        self.backbone = nn.Sequential(conv_net(width=width).encoder, nn.Flatten())
        self.projector = nn.Sequential(nn.Linear(width, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                       nn.Linear(64, dim))
        self.prototypes = nn.Linear(dim, prototypes, bias=False)
        self.normalise_prototypes()

    @torch.no_grad()
    def normalise_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = F.normalize(self.projector(self.backbone(x)), dim=1)
        return z, self.prototypes(z)


def main(epochs: int = 2, pool_size: int | None = None) -> None:
    torch.manual_seed(0)
    x, y, mean, std = digits()
    unlabelled = TensorDataset(x[300:][:pool_size])  # the pool: labels are never used
    labelled = TensorDataset(x[:300], y[:300])       # a small labelled target set
    augment = simclr_view(16, mean, std, jitter_strength=0.5, min_scale=0.3)

    model = SwAVNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-6)

    pool = bw.data.Indexed(unlabelled)                                            # + betaweighter
    weights = bw.BetaWeights(len(pool))                                           # + betaweighter
    meta = bw.MetaWeighter(model, weights, optimizer, target=labelled,            # + betaweighter
                           objective=bw.PrototypicalLoss(way=5, shot=5, query=5))

    loader = DataLoader(pool, batch_size=32, shuffle=True, drop_last=True)
    for epoch in range(epochs):
        for images, idx in loader:
            views = augment_pairs(images, augment, augment)  # rows 2i, 2i + 1: image i
            per_view_loss = SwappedPrediction(temperature=0.1, epsilon=0.05)  # this batch's
            loss = meta.backward(views, per_view_loss, idx)  # + betaweighter: was
            # loss = per_view_loss(model(views)).mean(); loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            model.normalise_prototypes()                     # back onto the sphere
        w = weights.mean()
        print(f"epoch {epoch}: SwAV loss {loss:.3f}, meta loss {meta.last_meta_loss:.3f}, "
              f"mean weight {w.mean():.3f} (min {w.min():.3f}, max {w.max():.3f})")


if __name__ == "__main__":
    main()
