"""Wrap an ordinary MAE loop with betaweighter: five added lines.

The loop below is plain PyTorch MAE (He et al., CVPR 2022): a random 75 % of each image's
patches are hidden, a small Vision Transformer (torchvision's, as `models.vit_tiny`)
encodes the visible quarter, a light decoder predicts the hidden patches' normalised
pixels, and each image's loss is its mean squared error over its hidden patches
(`bw.pretext.mae_loss`). The lines marked `# + betaweighter` add a Beta weight per
unlabelled image, judged by a prototypical few-shot loss on labelled images.

The random mask needs nothing special: `MAEPretext.forward` draws it from torch's
generator, as Dropout draws its masks, and `MetaWeighter` replays that generator in the
meta-gradient's second pass, so the pass sees the mask the training forward drew (and
checks that it reproduces the training losses).

    python examples/mae_loop.py           # about a minute and a half on a laptop CPU
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import betaweighter as bw
from betaweighter.models import vit_tiny
from betaweighter.pretext import MAEPretext, mae_loss


def digits(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as 3-channel `size` px images, standardised."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return (x - x.mean()) / x.std(), torch.tensor(d.target)


def main(epochs: int = 2, pool_size: int | None = None) -> None:
    torch.manual_seed(0)
    x, y = digits()
    unlabelled = TensorDataset(x[300:][:pool_size])  # the pool: labels are never used
    labelled = TensorDataset(x[:300], y[:300])       # a small labelled target set

    # 16 px images in 4 px patches (16 of them, 4 visible); features: the pooled tokens
    model = MAEPretext(vit_tiny(image_size=16, patch_size=4, blocks=2), mask_ratio=0.75,
                       decoder_dim=64, decoder_layers=1, decoder_heads=4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=1e-3, weight_decay=0.05)

    pool = bw.data.Indexed(unlabelled)                                            # + betaweighter
    weights = bw.BetaWeights(len(pool))                                           # + betaweighter
    meta = bw.MetaWeighter(model, weights, optimizer, target=labelled,            # + betaweighter
                           objective=bw.PrototypicalLoss(way=5, shot=5, query=5))

    loader = DataLoader(pool, batch_size=32, shuffle=True, drop_last=True)
    for epoch in range(epochs):
        for images, idx in loader:
            loss = meta.backward(images, mae_loss, idx)  # + betaweighter: was
            # loss = mae_loss(model(images)).mean(); loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        w = weights.mean()
        print(f"epoch {epoch}: MAE loss {loss:.3f}, meta loss {meta.last_meta_loss:.3f}, "
              f"mean weight {w.mean():.3f} (min {w.min():.3f}, max {w.max():.3f})")


if __name__ == "__main__":
    main()
