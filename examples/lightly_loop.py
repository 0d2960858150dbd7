"""A SimCLR loop built from lightly's parts, wrapped with betaweighter.

lightly (pip install "betaweighter[lightly]") supplies the projection head
(`SimCLRProjectionHead`), the two-view augmentation (`SimCLRTransform`) and the loss
(`NTXentLoss`). Its losses return the batch mean, and `MetaWeighter` needs one loss per row
to weight each image, so this example adapts the loss:

* `NTXentLoss` computes per-anchor cross-entropies and averages them in a
  ``CrossEntropyLoss(reduction="mean")`` attribute. Replacing that attribute with
  ``reduction="none"`` gives one loss per view, in lightly's order (all first views, then
  all second views); `PerViewNTXent` puts them back in the interleaved layout (rows 2i
  and 2i + 1 for image i). The mean of the result is lightly's loss, unchanged.
* `NegativeCosineSimilarity` (SimSiam, BYOL) is ``-cosine_similarity(x0, x1).mean()``
  with no switch: use ``bw.pretext.negative_cosine`` (the same expression without the
  mean) or ``bw.pretext.byol_loss`` / ``simsiam_loss``.
* `NTXentLoss(memory_bank_size=...)` (MoCo) cannot be used as it is: its memory bank
  enqueues inside the call, and `MetaWeighter` calls the loss twice per step (the training
  forward and the forward-mode pass of the meta-gradient), so the second call sees other
  negatives and MetaWeighter stops with "the model's forward is not reproducible" (tried
  with lightly 1.6). Use ``bw.pretext.MoCoPretext`` / ``info_nce_loss``, which fix the
  step's queue and update it after ``optimizer.step()``.

    python examples/lightly_loop.py       # about a minute on a laptop CPU
"""

from __future__ import annotations

import warnings

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset

import betaweighter as bw
from betaweighter.models import conv_net

try:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
except ImportError as e:  # pragma: no cover - depends on the optional extra
    raise SystemExit("this example needs lightly: pip install 'betaweighter[lightly]'") from e

# lightly's transforms call torchvision's deprecated to_tensor: not ours to fix
warnings.filterwarnings("ignore", message=".*to_tensor.*deprecated")


class PerViewNTXent:
    """lightly's NT-Xent with one loss per view, rows 2i and 2i + 1 for image i."""

    def __init__(self, temperature: float = 0.5) -> None:
        self.loss = NTXentLoss(temperature=temperature)
        self.loss.cross_entropy = nn.CrossEntropyLoss(reduction="none")

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        per_view = self.loss(z[0::2], z[1::2])           # (2B,): first views, then second
        return per_view.view(2, -1).t().reshape(-1)      # interleaved again


class DigitViews(Dataset):
    """scikit-learn's digits (16 px, 3 channels, in [0, 1]) as (two views, index):
    lightly's transform returns a list of views, stacked here to (2, C, H, W)."""

    def __init__(self, images: torch.Tensor, transform: SimCLRTransform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return torch.stack(self.transform(self.images[i])), i


class Net(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.backbone = nn.Sequential(conv_net(width=width).encoder, nn.Flatten())
        self.projector = SimCLRProjectionHead(width, 64, 32)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


def main(epochs: int = 2, pool_size: int | None = None) -> None:
    torch.manual_seed(0)
    d = load_digits()
    x = torch.nn.functional.interpolate(
        torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0, size=16,
        mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean, std = [float(x.mean())] * 3, [float(x.std())] * 3
    transform = SimCLRTransform(input_size=16, cj_strength=0.5, min_scale=0.3,
                                gaussian_blur=0.0, normalize={"mean": mean, "std": std})
    pool = DigitViews(x[300:][:pool_size], transform)    # yields (views, index)
    labelled = torch.utils.data.TensorDataset((x[:300] - mean[0]) / std[0],
                                              torch.tensor(d.target[:300]))

    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    per_view_loss = PerViewNTXent(temperature=0.5)

    weights = bw.BetaWeights(len(pool))
    meta = bw.MetaWeighter(model, weights, optimizer, target=labelled,
                           objective=bw.PrototypicalLoss(way=5, shot=5, query=5))

    loader = DataLoader(pool, batch_size=32, shuffle=True, drop_last=True)
    for epoch in range(epochs):
        for views, idx in loader:
            views = views.flatten(0, 1)                 # (B, 2, ...) -> rows 2i, 2i + 1
            loss = meta.backward(views, per_view_loss, idx)
            optimizer.step()
            optimizer.zero_grad()
        w = weights.mean()
        print(f"epoch {epoch}: NT-Xent (lightly) {loss:.3f}, meta loss "
              f"{meta.last_meta_loss:.3f}, mean weight {w.mean():.3f}")


if __name__ == "__main__":
    main()
