"""Transfer evaluators: what pre-trained features are worth downstream.

Protocols of "How Well Do Self-Supervised Models Transfer?" (Ericsson, Gouk, Hospedales,
CVPR 2021, arXiv:2011.13377), with the fragile parts of its research code fixed: a linear
probe with calibration (`linear_probe`), few-shot episodes (`fewshot`), fine-tuning
(`finetune`) and Faster R-CNN object detection (`detection`). Each works in Python on any
backbone with ``features(x)``; `evaluate` runs one of them on a checkpoint and writes
``eval_<task>.json`` beside it.
"""

from betaweighter.evaluate.calibration import (
    calibration_report,
    expected_calibration_error,
    fit_temperature,
)
from betaweighter.evaluate.checkpoint import CheckpointError, load_backbone, resolve_checkpoint
from betaweighter.evaluate.config import DEFAULTS, TASKS, ConfigError, resolve_config
from betaweighter.evaluate.detection import build_faster_rcnn, detection
from betaweighter.evaluate.detection_data import DetectionDataset, load_coco, load_voc
from betaweighter.evaluate.detection_metrics import coco_box_metrics, voc07_detection_ap
from betaweighter.evaluate.features import extract_features
from betaweighter.evaluate.fewshot import Episodes, fewshot, fit_fewshot, make_episodes
from betaweighter.evaluate.finetune import finetune
from betaweighter.evaluate.linear import fit_linear_probe, linear_probe
from betaweighter.evaluate.metrics import (
    accuracy,
    mean_confidence_interval,
    mean_per_class_accuracy,
    voc07_ap11,
)
from betaweighter.evaluate.run import evaluate, result_path

__all__ = [
    "DEFAULTS",
    "TASKS",
    "CheckpointError",
    "ConfigError",
    "DetectionDataset",
    "Episodes",
    "accuracy",
    "build_faster_rcnn",
    "calibration_report",
    "coco_box_metrics",
    "detection",
    "evaluate",
    "expected_calibration_error",
    "extract_features",
    "fewshot",
    "finetune",
    "fit_fewshot",
    "fit_linear_probe",
    "fit_temperature",
    "linear_probe",
    "load_backbone",
    "load_coco",
    "load_voc",
    "make_episodes",
    "mean_confidence_interval",
    "mean_per_class_accuracy",
    "resolve_checkpoint",
    "resolve_config",
    "result_path",
    "voc07_ap11",
    "voc07_detection_ap",
]
