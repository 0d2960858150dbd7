"""The default weighting in your own loop: score the pool for a few epochs, keep the most
useful half, then train plainly on it.

Cluster weights share one learned weight per k-means cluster of the model's features, so
every meta-gradient informs many images; the normalised loss makes the weights change
which data teaches, not how fast the model learns; the budget rule prunes once, when the
scoring phase ends, and from then on each step costs what a plain step costs.

    python examples/budget_loop.py        # about a minute on a laptop CPU

The pool is the offline mixture set: drawn shapes (the labelled target's domain) mixed
one-to-one with digits, photo patches, noise and rotation-symmetric images. The printout
says how many of the kept images are shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import betaweighter as bw
from betaweighter.models import conv_net


def main(epochs: int = 4, score_epochs: int = 2, shapes_per_class: int = 60) -> float:
    torch.manual_seed(0)
    data = bw.data.mixture(shapes_per_class=shapes_per_class)
    model = conv_net(num_classes=4, width=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    weights = bw.ClusterWeights(len(data.pool), clusters=16, prior="target")
    weights.fit(data.pool, data.target_train, model)      # clusters of the model's features
    meta = bw.MetaWeighter(model, weights, optimizer, target=data.target_train,
                           objective=bw.PrototypicalLoss(way=5, shot=5, query=5),
                           normalise=True, direction="running", every=4,
                           meta_gradient="one_sided")
    pruner = bw.PruningScheduler(weights, rule="budget", keep=0.5,
                                 score_epochs=score_epochs, in_domain=data.in_domain)

    for epoch in range(epochs):
        meta.plain = not pruner.scoring                    # after scoring: plain steps
        for images, idx in pruner.loader(data.pool, batch_size=32):
            inputs, labels = bw.rotate4(images)
            meta.backward(inputs, lambda out, y=labels: F.cross_entropy(out, y,
                                                                        reduction="none"), idx)
            optimizer.step()
            optimizer.zero_grad()
        pruner.step()
        if pruner.scoring:
            weights.on_epoch_end(epoch + 1, model)         # re-cluster with better features
        kept = pruner.active_indices()
        shapes = float(data.in_domain[kept].mean())
        phase = "plain" if meta.plain else "scoring"
        print(f"epoch {epoch + 1} ({phase}): "
              f"kept {len(kept)} of {len(data.pool)}, of which {shapes:.0%} shapes")
    return shapes


if __name__ == "__main__":
    main()
