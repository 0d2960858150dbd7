"""Token-level access to torchvision's `VisionTransformer`, for MAE and the ViT backbone.

torchvision's ``VisionTransformer.forward`` embeds every patch and returns the class
token's head output. Masked image modelling needs the encoder on a subset of the patches
(MAE encodes only the visible ones), and a backbone needs the tokens themselves, so this
module splits the forward into its two halves, built from the model's own modules:
`patch_tokens` (patch embedding plus position embedding, one token per patch) and
`encode` (the class token in front, the transformer blocks, the final LayerNorm).

torch's fused attention kernels (flash attention on the CPU, and on GPUs) have neither a
forward-mode derivative (the meta-gradient's fast path) nor a derivative of their
backward (the double backward, `higher`). `attention_kernel` selects torch's plain "math"
kernel, differentiable every way, whenever a gradient may be taken, and leaves the fused
kernels to forwards without one (evaluation, the finite-difference passes). For the short
sequences of small images (65 tokens at 32 px in 4 px patches) the difference is small.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.nn.attention import SDPBackend, sdpa_kernel
from torchvision.models.vision_transformer import VisionTransformer

from betaweighter.errors import DataError

__all__ = ["attention_kernel", "encode", "patch_tokens", "vision_transformer"]


def vision_transformer(backbone: nn.Module, task: str) -> VisionTransformer:
    """The torchvision `VisionTransformer` inside `backbone` (its ``encoder``), or a
    TypeError naming `task` and the model to use."""
    vit = getattr(backbone, "encoder", backbone)
    if not isinstance(vit, VisionTransformer):
        raise TypeError(f"{task} needs a Vision Transformer backbone (model.name: vit_tiny, "
                        f"or betaweighter.models.vit_tiny()); this one's encoder is a "
                        f"{type(vit).__name__}")
    return vit


def attention_kernel() -> Any:
    """A context for the attention blocks: torch's math kernel while autograd records or
    forward-mode AD is active (the fused kernels lack higher and forward derivatives),
    else nothing changed."""
    # torch keeps the open dual level in this module global (-1: none); there is no public
    # accessor, and forward_ad.dual_level() itself sets it.
    if torch.is_grad_enabled() or getattr(forward_ad, "_current_level", -1) >= 0:
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def patch_tokens(vit: VisionTransformer, x: Tensor) -> Tensor:
    """One token per patch, (B, L, D): the patch embedding plus its position embedding
    (the class token's position is added in `encode`)."""
    if x.dim() != 4 or x.shape[-2:] != (vit.image_size, vit.image_size):
        raise DataError(
            f"this Vision Transformer takes images of {vit.image_size}x{vit.image_size} px "
            f"(its position embeddings are fixed), got a batch of shape {tuple(x.shape)}: "
            f"resize the images to {vit.image_size} px, or build the model with "
            f"image_size={x.shape[-1]}")
    tokens = vit._process_input(x)  # conv_proj, flattened to (B, L, D)
    return tokens + vit.encoder.pos_embedding[:, 1:]


def encode(vit: VisionTransformer, tokens: Tensor) -> Tensor:
    """The transformer over `tokens` (B, K, D), any subset of `patch_tokens`' output, with
    the class token in front: (B, 1 + K, D) after the final LayerNorm."""
    cls = (vit.class_token + vit.encoder.pos_embedding[:, :1]).expand(tokens.shape[0], -1, -1)
    h = torch.cat([cls.to(tokens.dtype), tokens], dim=1)
    with attention_kernel():
        return vit.encoder.ln(vit.encoder.layers(vit.encoder.dropout(h)))
