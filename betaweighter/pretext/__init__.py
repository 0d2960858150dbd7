"""Self-supervised pretext tasks, expressed as per-sample losses, and the augmentation
presets applied to pool images before them (masked prediction: MAE; transformation
prediction: rotation; instance discrimination: SimCLR, MoCo, BYOL, SimSiam; clustering:
SwAV); the gather that batch-coupled losses use under torch.distributed."""

from betaweighter.pretext.augment import AUGMENTATIONS, PRESETS, Augment
from betaweighter.pretext.base import PRETEXTS, Pretext, PretextBatch, register_pretext
from betaweighter.pretext.boxes import PSEUDO_BOX_METHODS, PseudoBoxes, filter_boxes
from betaweighter.pretext.byol import (
    BYOLPretext,
    SimSiamPretext,
    byol_loss,
    negative_cosine,
    simsiam_loss,
)
from betaweighter.pretext.gather import gather_rows
from betaweighter.pretext.heads import mlp_head
from betaweighter.pretext.mae import MAEPretext, mae_loss, patchify, random_masking
from betaweighter.pretext.moco import MoCoPretext, info_nce_loss
from betaweighter.pretext.momentum import MomentumTarget, check_separate
from betaweighter.pretext.rotation import RotationPretext, rotate4, rotation_loss
from betaweighter.pretext.rpn import RPNPretext, check_boxes
from betaweighter.pretext.simclr import SimCLRPretext, nt_xent_loss
from betaweighter.pretext.sinkhorn import sinkhorn
from betaweighter.pretext.swav import SwappedPrediction, SwAVPretext, swav_loss
from betaweighter.pretext.twoview import TwoViewPretext
from betaweighter.pretext.views import (
    TwoViews,
    ViewPool,
    augment_pairs,
    interleave,
    simclr_view,
    swap_views,
    two_view_pipelines,
)

__all__ = [
    "AUGMENTATIONS", "PRESETS", "PRETEXTS", "PSEUDO_BOX_METHODS", "Augment", "BYOLPretext",
    "MAEPretext", "MoCoPretext", "MomentumTarget", "Pretext", "PretextBatch", "PseudoBoxes",
    "RPNPretext", "RotationPretext", "SimCLRPretext", "SimSiamPretext", "SwAVPretext",
    "SwappedPrediction", "TwoViewPretext", "TwoViews", "ViewPool", "augment_pairs", "byol_loss",
    "check_boxes", "check_separate", "filter_boxes", "gather_rows", "info_nce_loss", "interleave",
    "mae_loss", "mlp_head", "negative_cosine", "nt_xent_loss", "patchify", "random_masking",
    "register_pretext", "rotate4", "rotation_loss", "simclr_view", "simsiam_loss", "sinkhorn",
    "swap_views", "swav_loss", "two_view_pipelines",
]
