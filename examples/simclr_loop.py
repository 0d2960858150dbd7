"""Wrap an ordinary SimCLR loop with betaweighter: five added lines.

The loop below is plain PyTorch SimCLR (Chen et al., ICML 2020): two augmented views of
every image, a projection head, and the NT-Xent loss. The lines marked `# + betaweighter`
are all it takes to learn a Beta weight per unlabelled image, judged by a prototypical
few-shot loss on a handful of labelled images. Two habits make a loop easy to wrap, and
cost nothing without betaweighter: the two views of image i are rows 2i and 2i + 1
(`bw.pretext.interleave`, not torch.cat), and the loss is kept per view
(`bw.pretext.nt_xent_loss`) and averaged only for the plain backward.

    python examples/simclr_loop.py        # about a minute on a laptop CPU
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import betaweighter as bw
from betaweighter.models import conv_net
from betaweighter.pretext import augment_pairs, nt_xent_loss, simclr_view


def digits(size: int = 16):
    """scikit-learn's digits as 3-channel `size` px images, standardised; and the
    per-channel mean and std that undo it (the augmentations work in [0, 1])."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean, std = float(x.mean()), float(x.std())
    return (x - mean) / std, torch.tensor(d.target), (mean,) * 3, (std,) * 3


class SimCLRNet(nn.Module):
    """A small conv net and SimCLR's projection head; ``features`` is the representation."""

    def __init__(self, width: int = 16, dim: int = 32) -> None:
        super().__init__()
        self.backbone = nn.Sequential(conv_net(width=width).encoder, nn.Flatten())
        self.projector = nn.Sequential(nn.Linear(width, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                       nn.Linear(64, dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


def main(epochs: int = 2, pool_size: int | None = None) -> None:
    torch.manual_seed(0)
    x, y, mean, std = digits()
    unlabelled = TensorDataset(x[300:][:pool_size])  # the pool: labels are never used
    labelled = TensorDataset(x[:300], y[:300])       # a small labelled target set
    augment = simclr_view(16, mean, std, jitter_strength=0.5, min_scale=0.3)

    model = SimCLRNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    pool = bw.data.Indexed(unlabelled)                                            # + betaweighter
    weights = bw.BetaWeights(len(pool))                                           # + betaweighter
    meta = bw.MetaWeighter(model, weights, optimizer, target=labelled,            # + betaweighter
                           objective=bw.PrototypicalLoss(way=5, shot=5, query=5))

    loader = DataLoader(pool, batch_size=32, shuffle=True, drop_last=True)
    for epoch in range(epochs):
        for images, idx in loader:
            views = augment_pairs(images, augment, augment)  # rows 2i, 2i + 1: image i
            loss = meta.backward(views, nt_xent_loss, idx)  # + betaweighter: was
            # loss = nt_xent_loss(model(views)).mean(); loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        w = weights.mean()
        print(f"epoch {epoch}: NT-Xent {loss:.3f}, meta loss {meta.last_meta_loss:.3f}, "
              f"mean weight {w.mean():.3f} (min {w.min():.3f}, max {w.max():.3f})")


if __name__ == "__main__":
    main()
