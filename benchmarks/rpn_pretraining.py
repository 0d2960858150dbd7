"""Does RPN pre-training help label-scarce detection? One JSON line per detection run, then
a summary table (mean +- sample std over seeds).

    python benchmarks/rpn_pretraining.py                    # generated shapes, CPU size
    python benchmarks/rpn_pretraining.py --quick            # a smoke run (minutes)
    python benchmarks/rpn_pretraining.py --voc VOCdevkit/VOC2007 --size 320 --device cuda

Three initialisations of the same Faster R-CNN + FPN (ResNet-18), each fine-tuned on seeded
5 % and 10 % image subsets of the labelled training set and scored on the test set:

* ``backbone``: a ResNet-18 pre-trained by rotation prediction on the unlabelled pool;
  FPN, RPN and RoI heads start from random (what the library did before);
* ``rpn``: the same ResNet, frozen, plus FPN + RPN pre-trained on pseudo boxes of the pool
  (arXiv:2211.09022); only the RoI heads start from random;
* ``rpn_bdw``: as ``rpn``, with every pool image weighted by BDW (Beta weights learnt
  through `MetaWeighter`, judged by the RPN loss on a few labelled target images).

On the generated data the pool is half shapes scenes, half distractor textures with no
object, so the weighting has something to find. With ``--voc`` the pool is the training
images themselves (resized to ``--size``), unlabelled. All pre-training runs in the plain
Python loop a user would write (three added lines for the weighted variant). Wall times
are per stage on this machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # NumPy's BLAS threads spin against torch's

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import betaweighter as bw  # noqa: E402
from betaweighter.data import (  # noqa: E402
    SHAPE_CLASSES,
    BoxedImages,
    Indexed,
    TensorImages,
    load_voc,
    shapes,
    write_shapes_voc,
)
from betaweighter.evaluate.detection_protocols import (  # noqa: E402
    evaluate_label_scarce,
    mean_std,
)
from betaweighter.models import build_model  # noqa: E402


def log(**row) -> None:
    print(json.dumps(row), flush=True)


def shapes_data(args, root: Path):
    """The labelled shapes sets on disk (VOC format) and the pre-training bundle."""
    write_shapes_voc(root, args.train_images, args.size, seed=args.data_seed, split="trainval")
    write_shapes_voc(root, args.test_images, args.size, seed=args.data_seed + 1, split="test",
                     start=args.train_images)
    classes = list(SHAPE_CLASSES)
    train = load_voc(root, "trainval", classes=classes, hflip=True)
    test = load_voc(root, "test", classes=classes)
    bundle = shapes(seed=args.data_seed, pool_images=args.pool, distractor_ratio=1.0,
                    image_size=args.size, detection_target_images=args.target_images)
    return train, test, bundle.pool, bundle.mean, bundle.std, bundle.detection_target, \
        bundle.in_domain


def voc_data(args):
    """A real VOC set: the training images (resized, unlabelled) are the pool."""
    train = load_voc(args.voc, "trainval", hflip=True)
    test = load_voc(args.voc, args.voc_test_split, classes=train.classes)
    plain = copy.copy(train)
    plain.hflip = False
    images, boxes = [], []
    for i in range(len(plain)):
        x, t = plain[i]
        h, w = x.shape[1:]
        images.append(F.interpolate(x[None], size=(args.size, args.size), mode="bilinear",
                                    align_corners=False, antialias=True)[0])
        boxes.append(t["boxes"] * torch.tensor([args.size / w, args.size / h] * 2))
    x = torch.stack(images)
    mean = x.mean((0, 2, 3))
    std = x.std((0, 2, 3))
    x = (x - mean[:, None, None]) / std[:, None, None]
    k = min(args.target_images, len(x))
    target = BoxedImages(x[:k], boxes[:k], [torch.ones(len(b), dtype=torch.int64)
                                            for b in boxes[:k]])
    return (train, test, Indexed(TensorImages(x)), tuple(mean.tolist()), tuple(std.tolist()),
            target, None)


def rotation_pretraining(args, pool, device):
    torch.manual_seed(0)
    backbone = build_model("resnet18")
    pretext = bw.RotationPretext(backbone).to(device)
    opt = torch.optim.SGD(pretext.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(pool, batch_size=args.batch, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    start, losses = time.perf_counter(), []
    for _ in range(args.rotation_epochs):
        for x, _ in loader:
            b = pretext.batch(x.to(device))
            loss = b.loss_fn(pretext(b.inputs)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    log(stage="rotation", epochs=args.rotation_epochs, first_loss=losses[0],
        last_loss=float(np.mean(losses[-5:])), seconds=time.perf_counter() - start)
    return backbone.cpu()


def rpn_pretraining(args, backbone, pool, mean, std, target, in_domain, device, weighted):
    """FPN + RPN on pseudo boxes over the frozen trunk; BDW-weighted when `weighted`."""
    torch.manual_seed(0)
    boxes = bw.PseudoBoxes(args.boxes, topk=30, min_size=8)
    pretext = bw.RPNPretext(copy.deepcopy(backbone), boxes, mean=mean, std=std).to(device)
    opt = torch.optim.SGD([p for p in pretext.parameters() if p.requires_grad], lr=args.lr,
                          momentum=0.9, weight_decay=1e-4)
    meta = None
    if weighted:
        weights = bw.BetaWeights(len(pool)).to(device)
        meta = bw.MetaWeighter(pretext, weights, opt, bw.DetectionLoss(4, seed=0),
                               target=target,
                               weight_optimizer=bw.WeightOptimizer("sgd", args.weight_lr,
                                                                   momentum=0.9))
    loader = torch.utils.data.DataLoader(pool, batch_size=args.batch, shuffle=True,
                                         generator=torch.Generator().manual_seed(1))
    start, losses = time.perf_counter(), []
    pretext.train()
    for _ in range(args.rpn_epochs):
        for x, idx in loader:
            b = pretext.batch(x.to(device))
            if meta is None:
                loss = b.loss_fn(pretext(b.inputs)).mean()
                opt.zero_grad()
                loss.backward()
            else:
                loss = meta.backward(b.inputs, b.loss_fn, idx)
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
    row = {"stage": "rpn_bdw" if weighted else "rpn", "epochs": args.rpn_epochs,
           "boxes": args.boxes, "first_loss": losses[0],
           "last_loss": float(np.mean(losses[-5:])), "seconds": time.perf_counter() - start,
           "proposal_cache_hits": boxes.hits, "proposal_cache_misses": boxes.misses}
    if meta is not None:
        w = meta.weights.mean().detach().cpu().numpy()
        row["mean_weight"] = float(w.mean())
        if in_domain is not None:
            from sklearn.metrics import roc_auc_score

            row["mean_weight_in_domain"] = float(w[in_domain].mean())
            row["mean_weight_distractor"] = float(w[~in_domain].mean())
            row["auroc_in_domain"] = float(roc_auc_score(in_domain, w))
    log(**row)
    return pretext.cpu().detector_state()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--voc", type=Path, help="a VOC2007-style root instead of generated shapes")
    p.add_argument("--voc-test-split", default="test")
    p.add_argument("--size", type=int, default=96, help="image side (pool and detector)")
    p.add_argument("--pool", type=int, default=300, help="shapes scenes in the pool "
                   "(plus as many distractors)")
    p.add_argument("--train-images", type=int, default=400)
    p.add_argument("--test-images", type=int, default=100)
    p.add_argument("--target-images", type=int, default=16,
                   help="labelled images of the detection meta objective")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rotation-epochs", type=int, default=3)
    p.add_argument("--rpn-epochs", type=int, default=3)
    p.add_argument("--boxes", default="felzenszwalb", choices=bw.pretext.PSEUDO_BOX_METHODS)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--weight-lr", type=float, default=1.0)
    p.add_argument("--det-images", type=int, default=600,
                   help="images seen by each detection fine-tuning")
    p.add_argument("--det-lr", type=float, default=0.01)
    p.add_argument("--warmup-images", type=int, default=200)
    p.add_argument("--trainable-layers", type=int, default=1)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="a few-minute smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.pool, args.train_images, args.test_images = 24, 40, 10
        args.rotation_epochs = args.rpn_epochs = 1
        args.seeds, args.det_images, args.size = [0], 8, 64
    device = torch.device(args.device)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = voc_data(args) if args.voc else shapes_data(args, Path(tmp) / "voc")
        train, test, pool, mean, std, target, in_domain = data
        log(stage="data", dataset="voc" if args.voc else "shapes", train_images=len(train),
            test_images=len(test), pool=len(pool), size=args.size,
            torch_threads=torch.get_num_threads(), device=str(device))
        backbone = rotation_pretraining(args, pool, device)
        inits = {"backbone": None,
                 "rpn": rpn_pretraining(args, backbone, pool, mean, std, target, in_domain,
                                        device, weighted=False),
                 "rpn_bdw": rpn_pretraining(args, backbone, pool, mean, std, target,
                                            in_domain, device, weighted=True)}
        table = {}
        for name, init in inits.items():
            t0, report = time.perf_counter(), {}
            for frac in args.fractions:
                runs = []
                for seed in args.seeds:  # one run at a time, logged as it ends
                    try:
                        r = evaluate_label_scarce(
                            backbone, train, test, fractions=[frac], seeds=[seed],
                            detector_init=init, images=args.det_images, batch_size=4,
                            min_size=args.size, max_size=args.size, image_mean=mean,
                            image_std=std, trainable_layers=args.trainable_layers,
                            lr=args.det_lr, warmup_images=args.warmup_images, device=device)
                    except FloatingPointError as e:  # a diverged run is a result too
                        log(stage="detection", init=name, fraction=f"{100 * frac:g}%",
                            seed=seed, diverged=str(e))
                        continue
                    (res,) = r["results"].values()
                    report = r["init"]
                    run = res["runs"][0]
                    log(stage="detection", init=name, fraction=f"{100 * frac:g}%", **run)
                    runs.append(run)
                table[(name, f"{100 * frac:g}%")] = runs
            log(stage="detection_done", init=name, loaded=report.get("loaded"),
                fresh=report.get("fresh"), seconds=time.perf_counter() - t0)
    print("\n| init | labels | AP | AP50 | AP75 | runs |", file=sys.stderr)
    print("| --- | --- | --- | --- | --- | --- |", file=sys.stderr)
    for (name, frac), runs in table.items():
        cells = []
        for k in ("AP", "AP50", "AP75"):
            m, s = mean_std([r[k] for r in runs])
            cells.append("n/a" if m is None else f"{100 * m:.1f} ± {100 * s:.1f}")
        print(f"| {name} | {frac} | " + " | ".join(cells) + f" | {len(runs)} |",
              file=sys.stderr)
    print(f"total wall time {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
