"""The ``evaluate.<task>`` sections of the config schema: what `betaweighter evaluate`
runs on a checkpoint (linear probe, few-shot, fine-tuning, detection, semantic and instance
segmentation) and what `betaweighter invariance` measures.

Image size and normalisation default to null, which means "what the checkpoint was
pre-trained with" (its ``data_config``); paths are resolved like every path of a config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from betaweighter.data.options import MAX_SEED
from betaweighter.data.transfer_sets import TRANSFER_DATASETS
from betaweighter.evaluate.invariance_transforms import PROTOCOLS, TRANSFORMS

__all__ = ["PATH", "ClassificationData", "CocoSource", "DetectionData", "DetectionTask",
           "FewShotDetection", "FewshotTask", "FinetuneTask", "InstanceSegmentationData",
           "InstanceSegmentationTask", "InvarianceData", "InvarianceTask", "LinearTask",
           "SegmentationData", "SegmentationTask", "span"]


def span(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         hi_open: bool = False, min_items: int = 0) -> dict:
    """Field metadata: the allowed range of a number (open or closed at each end); for a
    list, of each item, and the list's least length `min_items`."""
    return {"range": (lo, hi, lo_open, hi_open), "min_items": min_items}


#: Field metadata: a path, resolved against the config file's folder (or the working
#: directory for --set).
PATH = {"path": True}
_range = span
#: Field metadata of a seed (numpy's and scikit-learn's generators take seeds below 2**32),
#: of a list of seeds, and of a normalisation's means (any finite number) and standard
#: deviations (positive).
SEED = span(0, MAX_SEED)
SEEDS = span(0, MAX_SEED, min_items=1)
MEAN = span()
STD = span(0, lo_open=True)
TRANSFER_NAMES = tuple(TRANSFER_DATASETS)


@dataclass
class ClassificationData:
    # ImageFolder roots (one sub-folder of images per class) ...
    train: str | None = field(default=None, metadata=PATH)
    val: str | None = field(default=None, metadata=PATH)
    test: str | None = field(default=None, metadata=PATH)
    # ... or one of the paper's datasets read by torchvision with its official splits
    # (betaweighter.data.transfer_sets), under `root` in torchvision's layout.
    dataset: Literal[TRANSFER_NAMES] | None = None  # type: ignore[valid-type]
    root: str | None = field(default=None, metadata=PATH)
    val_fraction: float = field(default=0.2, metadata=_range(0, 1, True, True))


@dataclass
class _TaskCommon:
    batch_size: int = field(default=64, metadata=_range(1))
    num_workers: int = field(default=0, metadata=_range(0))
    seed: int = field(default=0, metadata=SEED)
    # null: the image size and normalisation the checkpoint was pre-trained with
    image_size: int | None = field(default=None, metadata=_range(8))
    mean: list[float] | None = field(default=None, metadata=MEAN)
    std: list[float] | None = field(default=None, metadata=STD)


@dataclass
class LinearTask(_TaskCommon):
    data: ClassificationData = field(default_factory=ClassificationData)
    # null: the 45-value grid of arXiv:2011.13377
    c_values: list[float] | None = field(default=None, metadata=_range(0, lo_open=True,
                                                                       min_items=1))
    max_iter: int = field(default=1000, metadata=_range(1))
    metric: Literal["top1", "mean_per_class"] = "top1"
    standardize: bool = False
    calibration_bins: int = field(default=15, metadata=_range(1))
    cache_features: bool = True


@dataclass
class FewshotTask(_TaskCommon):
    data: ClassificationData = field(default_factory=ClassificationData)
    way: int = field(default=5, metadata=_range(2))
    shot: int = field(default=5, metadata=_range(1))
    query: int = field(default=15, metadata=_range(1))
    episodes: int = field(default=600, metadata=_range(1))
    classifier: Literal["ncm", "logistic"] = "ncm"
    logistic_c: float = field(default=1.0, metadata=_range(0, lo_open=True))
    feature_norm: Literal["none", "l2"] = "none"
    splits: list[Literal["train", "val", "test"]] = field(
        default_factory=lambda: ["train", "val", "test"])
    episodes_file: str | None = field(default=None, metadata=PATH)
    cache_features: bool = True


@dataclass
class FinetuneTask(_TaskCommon):
    data: ClassificationData = field(default_factory=ClassificationData)
    steps: int = field(default=5000, metadata=_range(1))
    optimizer: Literal["sgd", "adam"] = "sgd"
    lrs: list[float] = field(default_factory=lambda: [0.1, 0.01, 0.001],
                             metadata=_range(0, lo_open=True, min_items=1))
    weight_decays: list[float] = field(default_factory=lambda: [0.0, 1e-4],
                                       metadata=_range(0, min_items=1))
    momentum: float = field(default=0.9, metadata=_range(0, 1))
    metric: Literal["top1", "mean_per_class"] = "top1"
    refit: bool = True


@dataclass
class DetectionData:
    # Each source: {format: coco, images: DIR, annotations: FILE.json} or
    # {format: voc, root: VOCdevkit/VOC2007, split: trainval}; train may list several.
    train: list[dict] | dict | None = None
    test: list[dict] | dict | None = None
    on_bad_box: Literal["skip", "error"] = "skip"


@dataclass
class FewShotDetection:
    # Novel classes by name; null: TFA's VOC split `split` (1, 2 or 3).
    novel_classes: list[str] | None = None
    split: int = field(default=1, metadata=_range(1, 3))
    shots: list[int] = field(default_factory=lambda: [1, 2, 3, 5, 10],
                             metadata=_range(1, min_items=1))
    # tfa: base training, then only the box predictor on the K-shot set; direct: the whole
    # detector on the K-shot set, from the initialisation.
    finetune: Literal["tfa", "direct"] = "tfa"
    base_images: int = field(default=20_000, metadata=_range(1))


@dataclass
class DetectionTask:
    data: DetectionData = field(default_factory=DetectionData)
    # backbone: only the trunk is pre-trained; rpn: also the FPN and RPN of an RPN
    # pre-training checkpoint (pretext rpn), the rest starts fresh.
    init: Literal["backbone", "rpn"] = "backbone"
    # null: the checkpoint's (init: rpn) or torchvision's defaults
    anchor_sizes: list[int] | None = field(default=None, metadata=_range(1, min_items=1))
    aspect_ratios: list[float] | None = field(default=None,
                                              metadata=_range(0, lo_open=True, min_items=1))
    # full: one run on all training images; label_scarce: each of `fractions` of the
    # images, for each of `seeds`; few_shot: the K-shot protocol of `few_shot`.
    protocol: Literal["full", "label_scarce", "few_shot"] = "full"
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.05, 0.1],
                                   metadata=_range(0, 1, lo_open=True, min_items=1))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata=SEEDS)
    few_shot: FewShotDetection = field(default_factory=FewShotDetection)
    batch_size: int = field(default=2, metadata=_range(1))
    num_workers: int = field(default=0, metadata=_range(0))
    seed: int = field(default=0, metadata=SEED)
    mean: list[float] | None = field(default=None, metadata=MEAN)
    std: list[float] | None = field(default=None, metadata=STD)
    trainable_layers: int = field(default=1, metadata=_range(0, 5))
    images: int = field(default=288_000, metadata=_range(1))
    lr: float | None = field(default=None, metadata=_range(0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0, 1))
    weight_decay: float = field(default=1e-4, metadata=_range(0))
    warmup_images: int = field(default=200, metadata=_range(0))
    lr_steps: list[float] = field(default_factory=lambda: [2 / 3, 8 / 9],
                                  metadata=_range(0, 1))
    min_size: list[int] = field(default_factory=lambda: list(range(480, 801, 32)),
                                metadata=_range(1, min_items=1))
    max_size: int = field(default=1333, metadata=_range(1))
    score_threshold: float = field(default=0.05, metadata=_range(0, 1))
    detections_per_image: int = field(default=100, metadata=_range(1))
    hflip: bool = True


@dataclass
class InvarianceData:
    # Images measured: a folder (any tree of image files). null: the run's own test split
    # (a checkpoint inside a run directory only).
    images: str | None = field(default=None, metadata=PATH)
    # Images for the feature mean and covariance; null: the measured images themselves.
    reference: str | None = field(default=None, metadata=PATH)
    # Optional multi-view folders (object/view.png, as COIL-100 or ALOI) for invariance to
    # real changes of view or lighting.
    views: str | None = field(default=None, metadata=PATH)


@dataclass
class InvarianceTask:
    # Invariance to synthetic transformations (arXiv:2111.11398); `betaweighter invariance`.
    data: InvarianceData = field(default_factory=InvarianceData)
    protocol: Literal[PROTOCOLS] = "v2"  # type: ignore[valid-type]
    transforms: list[Literal[TRANSFORMS]] | None = None  # type: ignore[valid-type]
    k: int | None = field(default=None, metadata=_range(1))  # null: the paper's 256
    num_images: int = field(default=1000, metadata=_range(1))
    # auto (Ledoit-Wolf when the reference set is too small), none, ledoit_wolf, or [0, 1]
    shrinkage: Literal["auto", "none", "ledoit_wolf"] | float = field(default="auto",
                                                                     metadata=_range(0, 1))
    batch_size: int = field(default=64, metadata=_range(1))
    seed: int = field(default=0, metadata=SEED)
    # null: the checkpoint's training input; resize null = image_size x 256 / 224
    image_size: int | None = field(default=None, metadata=_range(8))
    resize: int | None = field(default=None, metadata=_range(8))
    mean: list[float] | None = field(default=None, metadata=MEAN)
    std: list[float] | None = field(default=None, metadata=STD)


@dataclass
class SegmentationData:
    # voc: Pascal VOC's layout through torchvision's VOCSegmentation (download=False),
    # `root` holding VOCdevkit/ (or being VOCdevkit/VOC20xx); folders: `train` and `test`
    # each hold images/<name>.<ext> and masks/<name>.png (pixel value = class id, 255 = ignore).
    format: Literal["voc", "folders"] = "voc"
    root: str | None = field(default=None, metadata=PATH)  # voc only
    year: int = field(default=2012, metadata=_range(2007, 2012))  # voc only
    train_split: str = "train"  # voc only: an ImageSets/Segmentation list (train, trainval)
    test_split: str = "val"  # voc only
    train: str | None = field(default=None, metadata=PATH)  # folders only
    test: str | None = field(default=None, metadata=PATH)  # folders only
    # One name per mask value 0..K-1; required for folders; null for voc: background + 20.
    classes: list[str] | None = None


@dataclass
class SegmentationTask:
    # Semantic segmentation (`--task segmentation`): a torchvision head on the feature map.
    data: SegmentationData = field(default_factory=SegmentationData)
    head: Literal["fcn", "deeplab"] = "fcn"  # torchvision's FCNHead or DeepLabHead (ASPP)
    # finetune: the backbone trains with the head (the paper); frozen: only the head trains.
    backbone: Literal["finetune", "frozen"] = "finetune"
    # ResNets: 8, 16 or 32, the last stages dilated (null: 8, as torchvision's FCN and
    # DeepLabV3); the conv net keeps its own stride (null only).
    output_stride: Literal[8, 16, 32] | None = None
    # finetune only: train updates the backbone's BatchNorm (the paper, torchvision's
    # recipe); frozen keeps its statistics and affine parameters (FrozenBatchNorm2d).
    batchnorm: Literal["train", "frozen"] = "train"
    images: int = field(default=44_000, metadata=_range(1))  # training crops seen (30 VOC epochs)
    batch_size: int = field(default=8, metadata=_range(2))  # >= 2: the heads' BatchNorm trains
    # null: 0.02 x batch_size / 32 (torchvision's recipe, scaled linearly)
    lr: float | None = field(default=None, metadata=_range(0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0, 1))  # SGD momentum
    weight_decay: float = field(default=1e-4, metadata=_range(0))  # SGD weight decay
    poly_power: float = field(default=0.9, metadata=_range(0))  # lr x (1 - it / iterations)^power
    # Training crop side; null: the checkpoint's pre-training image size.
    image_size: int | None = field(default=None, metadata=_range(8))
    # The shorter side is first rescaled to a random multiple of image_size in this range.
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0],
                                     metadata=_range(0, lo_open=True, min_items=2))
    hflip: bool = True  # random horizontal flips in training
    # Test images' shorter side (null: image_size); scored at their original mask size.
    test_size: int | None = field(default=None, metadata=_range(8))
    num_workers: int = field(default=0, metadata=_range(0))  # data-loading processes
    seed: int = field(default=0, metadata=SEED)  # crops, flips, order and the head's init
    # null: the checkpoint's normalisation
    mean: list[float] | None = field(default=None, metadata=MEAN)
    std: list[float] | None = field(default=None, metadata=STD)


@dataclass
class CocoSource:
    images: str | None = field(default=None, metadata=PATH)  # the folder of image files
    annotations: str | None = field(default=None, metadata=PATH)  # COCO JSON with masks


@dataclass
class InstanceSegmentationData:
    # COCO-format sets whose annotations carry a `segmentation` (polygons or RLE) per box.
    train: CocoSource = field(default_factory=CocoSource)
    test: CocoSource = field(default_factory=CocoSource)
    on_bad_box: Literal["skip", "error"] = "skip"  # as for detection


@dataclass
class InstanceSegmentationTask:
    # Instance segmentation (`--task instance_segmentation`): Mask R-CNN + FPN; mask AP and
    # box AP by pycocotools. Defaults: detectron2's COCO R50-FPN "1x" schedule.
    data: InstanceSegmentationData = field(default_factory=InstanceSegmentationData)
    # backbone: only the trunk is pre-trained; rpn: also the FPN and RPN of an RPN
    # pre-training checkpoint (pretext rpn); the box and mask heads start fresh.
    init: Literal["backbone", "rpn"] = "backbone"
    # null: the checkpoint's (init: rpn) or torchvision's defaults
    anchor_sizes: list[int] | None = field(default=None, metadata=_range(1, min_items=1))
    aspect_ratios: list[float] | None = field(default=None,
                                              metadata=_range(0, lo_open=True, min_items=1))
    trainable_layers: int = field(default=3, metadata=_range(0, 5))  # trunk stages that train
    images: int = field(default=1_440_000, metadata=_range(1))  # 90k iterations x 16
    batch_size: int = field(default=2, metadata=_range(1))  # images per step
    # null: 0.02 x batch_size / 16 (detectron2's, scaled linearly)
    lr: float | None = field(default=None, metadata=_range(0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0, 1))  # SGD momentum
    weight_decay: float = field(default=1e-4, metadata=_range(0))  # SGD weight decay
    warmup_images: int = field(default=16_000, metadata=_range(0))  # linear warm-up
    lr_steps: list[float] = field(default_factory=lambda: [2 / 3, 8 / 9],
                                  metadata=_range(0, 1))  # lr / 10 at these
    # Shorter side per training image, drawn from the list; the last one is the test size.
    min_size: list[int] = field(default_factory=lambda: list(range(640, 801, 32)),
                                metadata=_range(1, min_items=1))
    max_size: int = field(default=1333, metadata=_range(1))  # longer side at most
    score_threshold: float = field(default=0.05, metadata=_range(0, 1))  # kept detections
    detections_per_image: int = field(default=100, metadata=_range(1))  # at most, scored
    mask_threshold: float = field(default=0.5, metadata=_range(0, 1, True, True))  # mask pixels
    # Proposals sampled per training image for the box and mask heads (<= 1/4 positive).
    rois_per_image: int = field(default=512, metadata=_range(1))
    hflip: bool = True  # random horizontal flips in training
    num_workers: int = field(default=0, metadata=_range(0))  # data-loading processes
    seed: int = field(default=0, metadata=SEED)  # image order, flips, heads' init
    # null: the checkpoint's normalisation
    mean: list[float] | None = field(default=None, metadata=MEAN)
    std: list[float] | None = field(default=None, metadata=STD)
