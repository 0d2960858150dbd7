"""Wrap an ordinary rotation-prediction loop with betaweighter: five added lines.

The loop below is plain PyTorch: a small conv net learns to predict how each image was
rotated. The lines marked `# + betaweighter` are all it takes to learn a Beta weight per
unlabelled image, judged by a prototypical few-shot loss on a handful of labelled images.

    python examples/custom_loop.py        # under a minute on a laptop CPU
    torchrun --standalone --nproc_per_node 2 examples/custom_loop.py   # the same under DDP

Under torchrun the loop is the usual DDP one (the model wrapped in DistributedDataParallel,
a DistributedSampler); MetaWeighter keeps the weights identical on every process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import betaweighter as bw
from betaweighter.models import conv_net


def digits(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's handwritten digits as 3-channel `size` px images, standardised."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return (x - x.mean()) / x.std(), torch.tensor(d.target)


def main(epochs: int = 2, pool_size: int | None = None) -> None:
    distributed = bw.runtime.init_distributed()  # True under torchrun (gloo on the CPU)
    torch.manual_seed(0)
    x, y = digits()
    unlabelled = TensorDataset(x[300:][:pool_size])  # the pool: labels are never used
    labelled = TensorDataset(x[:300], y[:300])       # a small labelled target set

    model = conv_net(num_classes=4, width=16)
    if distributed:
        model = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    pool = bw.data.Indexed(unlabelled)                                            # + betaweighter
    weights = bw.BetaWeights(len(pool))                                           # + betaweighter
    meta = bw.MetaWeighter(model, weights, optimizer, target=labelled,            # + betaweighter
                           objective=bw.PrototypicalLoss(way=5, shot=5, query=5))

    sampler = DistributedSampler(pool, drop_last=True) if distributed else None
    loader = DataLoader(pool, batch_size=32, shuffle=sampler is None, sampler=sampler,
                        drop_last=True)
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for images, idx in loader:
            inputs, labels = bw.rotate4(images)

            def per_sample_loss(out, labels=labels):
                return F.cross_entropy(out, labels, reduction="none")

            loss = meta.backward(inputs, per_sample_loss, idx)  # + betaweighter: was .backward()
            optimizer.step()
            optimizer.zero_grad()
        w = weights.mean()
        if bw.runtime.is_main():
            print(f"epoch {epoch}: rotation loss {loss:.3f}, meta loss "
                  f"{meta.last_meta_loss:.3f}, mean weight {w.mean():.3f} (min {w.min():.3f}, "
                  f"max {w.max():.3f}, checksum {float(weights.log_alpha.detach().sum()):.6f})")
    if distributed:
        bw.runtime.finish_distributed()  # last: under gloo it ends the process


if __name__ == "__main__":
    main()
