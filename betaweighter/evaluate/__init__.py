"""Transfer evaluators: what pre-trained features are worth downstream.

Pure functions over a backbone (anything with ``features(x)``) and datasets, following
"How Well Do Self-Supervised Models Transfer?" (Ericsson, Gouk and Hospedales, CVPR 2021,
arXiv:2011.13377) with the fragile parts of its research code fixed: a linear probe with
calibration (`linear_probe`), few-shot episodes (`evaluate_fewshot`), fine-tuning
(`evaluate_finetune`) and Faster R-CNN object detection (`evaluate_detection`, starting
from an RPN pre-training checkpoint with `load_detector_init`; label-scarce and few-shot
protocols in `evaluate_label_scarce` and `evaluate_few_shot_detection`), semantic
segmentation with torchvision's FCN or DeepLabV3 head on the spatial trunk
(`evaluate_segmentation`, `spatial_trunk`) and Mask R-CNN instance segmentation
(`evaluate_instance_segmentation`). The command ``betaweighter evaluate`` runs them on a
checkpoint from a config.

What the features became, after "Why Do Self-Supervised Models Transfer?" (Ericsson,
Gouk and Hospedales, arXiv:2111.11398): invariance to synthetic transformations
(`measure_invariance`) and to real changes of view (`measure_view_invariance`), and
fused backbones that combine models with complementary invariances (`fuse`).
"""

from betaweighter.evaluate.calibration import (
    calibration_report,
    expected_calibration_error,
    fit_temperature,
)
from betaweighter.evaluate.dense import spatial_trunk
from betaweighter.evaluate.detection import (
    build_faster_rcnn,
    evaluate_detection,
    load_detector_init,
)
from betaweighter.evaluate.detection_metrics import coco_box_metrics, voc07_detection_ap
from betaweighter.evaluate.detection_protocols import (
    evaluate_few_shot_detection,
    evaluate_label_scarce,
    few_shot_set,
    label_subsets,
)
from betaweighter.evaluate.features import extract_features
from betaweighter.evaluate.fewshot import Episodes, evaluate_fewshot, fit_fewshot, make_episodes
from betaweighter.evaluate.finetune import evaluate_finetune
from betaweighter.evaluate.fusion import FUSION_MODES, FusedBackbone, fuse
from betaweighter.evaluate.instance_segmentation import (
    build_mask_rcnn,
    evaluate_instance_segmentation,
)
from betaweighter.evaluate.invariance import measure_invariance, reference_stats, to_uint8
from betaweighter.evaluate.invariance_table import InvarianceTable
from betaweighter.evaluate.invariance_transforms import TRANSFORMS
from betaweighter.evaluate.linear import fit_linear_probe, linear_probe, select_c
from betaweighter.evaluate.metrics import (
    METRICS,
    accuracy,
    mean_confidence_interval,
    mean_per_class_accuracy,
    voc07_ap11,
)
from betaweighter.evaluate.segmentation import build_segmenter, evaluate_segmentation
from betaweighter.evaluate.segmentation_metrics import confusion_matrix, segmentation_scores
from betaweighter.evaluate.view_invariance import measure_view_invariance, read_view_groups
from betaweighter.evaluate.whitening import FeatureStats

__all__ = [
    "FUSION_MODES",
    "METRICS",
    "TRANSFORMS",
    "Episodes",
    "FeatureStats",
    "FusedBackbone",
    "InvarianceTable",
    "accuracy",
    "build_faster_rcnn",
    "build_mask_rcnn",
    "build_segmenter",
    "calibration_report",
    "coco_box_metrics",
    "confusion_matrix",
    "evaluate_detection",
    "evaluate_few_shot_detection",
    "evaluate_label_scarce",
    "evaluate_fewshot",
    "evaluate_finetune",
    "evaluate_instance_segmentation",
    "evaluate_segmentation",
    "expected_calibration_error",
    "extract_features",
    "few_shot_set",
    "fit_fewshot",
    "fit_linear_probe",
    "fit_temperature",
    "fuse",
    "label_subsets",
    "linear_probe",
    "load_detector_init",
    "make_episodes",
    "mean_confidence_interval",
    "mean_per_class_accuracy",
    "measure_invariance",
    "measure_view_invariance",
    "read_view_groups",
    "reference_stats",
    "segmentation_scores",
    "select_c",
    "spatial_trunk",
    "to_uint8",
    "voc07_ap11",
    "voc07_detection_ap",
]
