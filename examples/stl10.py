"""BDW on STL-10, top to bottom: the paper's recipe written out with the library's parts.

    python examples/stl10.py --data-root ~/data          # expects ~/data/stl10_binary/
    python examples/stl10.py --data-root ~/data --download

Defaults follow the paper (Ericsson et al., arXiv:2006.12360): ResNet-18, 35 epochs of
rotation prediction, SGD lr 0.1 (x0.1 at epochs 15 and 25), batch 32 (x4 rotations),
10-way 10-shot 10-query episodes from the labelled split, the scale-free weight
optimiser, CDF pruning with
epsilon 0.1 and delta 0.5, and a linear probe for model selection and the final score.
The flags shrink it for a quick try (`--model convnet --epochs 2 --max-steps 20`).
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import betaweighter as bw
from betaweighter.evaluate import extract_features, linear_probe, select_c
from betaweighter.models import build_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True, help="folder holding stl10_binary/")
    p.add_argument("--download", action="store_true", help="fetch STL-10 (2.6 GB) if missing")
    p.add_argument("--model", default="resnet18", choices=["resnet18", "convnet"])
    p.add_argument("--epochs", type=int, default=35)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--episode", type=int, nargs=3, default=[10, 10, 10],
                   metavar=("WAY", "SHOT", "QUERY"))
    p.add_argument("--weight-lr", type=float, default=bw.weights.optimizer.DEFAULT_LR,
                   help="movement of a Beta parameter per visit for a typical signal")
    p.add_argument("--max-steps", type=int, help="stop each epoch after this many steps")
    p.add_argument("--val-per-class", type=int, nargs=2, default=[250, 250],
                   metavar=("TRAIN", "TEST"), help="labelled split sizes per class")
    p.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)

    # 1. Data: the 100k unlabelled images as the pool, a labelled split of the 5k train
    #    images as the target (val_train for the meta objective, val_test for selection).
    data = bw.data.stl10(args.data_root, download=args.download,
                         val_train_per_class=args.val_per_class[0],
                         val_test_per_class=args.val_per_class[1])
    print(data.summary())

    # 2. Model, its optimiser and schedule: exactly what a plain RotNet run would use.
    model = build_model(args.model, num_classes=4).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [15, 25], gamma=0.1)

    # 3. One Beta weight per unlabelled image, learnt through the look-ahead, and pruning.
    weights = bw.BetaWeights(len(data.pool)).to(device)
    way, shot, query = args.episode
    meta = bw.MetaWeighter(model, weights, optimizer, bw.PrototypicalLoss(way, shot, query),
                           target=data.target_train,
                           weight_optimizer=bw.WeightOptimizer(lr=args.weight_lr))
    pruner = bw.PruningScheduler(weights, rule="cdf", epsilon=0.1, delta=0.5)

    best_val, best_state = -1.0, None
    for epoch in range(args.epochs):
        model.train()
        loader = pruner.loader(data.pool, batch_size=args.batch_size, num_workers=args.workers)
        for step, (x, idx) in enumerate(tqdm(loader, desc=f"epoch {epoch + 1}", disable=None)):
            if args.max_steps is not None and step >= args.max_steps:
                break
            x, y = bw.rotate4(x.to(device))
            meta.backward(x, lambda out, y=y: F.cross_entropy(out, y, reduction="none"), idx)
            optimizer.step()
            optimizer.zero_grad()
        schedule.step()
        record = pruner.step()

        # 4. Model selection: a linear probe fitted on val_train, scored on val_test.
        train = extract_features(model, data.target_train, device=device, name="val_train")
        val = extract_features(model, data.target_val, device=device, name="val_test")
        val_acc = select_c(train, val, c_values=[0.1, 1.0, 10.0])["val_score"]
        print(f"epoch {epoch + 1}: val accuracy {val_acc:.3f}, kept "
              f"{record['kept_fraction']:.2%}, mean weight {weights.mean().mean():.3f}")
        if val_acc > best_val:
            best_val, best_state = val_acc, copy.deepcopy(model.state_dict())

    # 5. The best model's linear-probe accuracy on the official test set.
    model.load_state_dict(best_state)
    result = linear_probe(model, data.target_train, data.target_val, data.test, device=device)
    print(f"test accuracy (linear probe): {result['top1']:.4f}")
    return result["top1"]


if __name__ == "__main__":
    main()
