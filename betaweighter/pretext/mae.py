"""Masked autoencoders: reconstruct the masked patches of each image, one loss per image.

He, Chen, Xie, Li, Dollar and Girshick, "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022, arXiv:2111.06377. Each image is cut into L square patches; a random
`mask_ratio` of them (0.75) is hidden, the Vision Transformer encoder sees only the visible
ones, and a light decoder (a few transformer blocks over the encoded tokens plus a shared
learned mask token at every hidden position) predicts the pixels of every patch. The loss
of image i is the mean squared error over its masked patches only,

    l_i = sum_p m_ip mse(pred_ip, target_ip) / sum_p m_ip,

with targets the patch's pixels normalised by the patch's own mean and variance (MAE's
``norm_pix_loss``, which the paper finds gives better representations). One row per
image (``copies = 1``): rows are independent, so the weighted loss is linear in the
weights as for rotation prediction.

The mask is drawn inside ``forward`` from torch's default generator on the images'
device, as Dropout draws its masks. `MetaWeighter` snapshots torch's generators before the
training forward and replays them in the meta-gradient's second passes (forward mode,
finite differences; `betaweighter.meta.replay`), so those passes see the very mask the
training forward drew, and the per-image losses they recompute are the same function of
the parameters; it checks that they reproduce the training losses, and refuses a forward
that does not. A fixed mask can also be passed to ``forward`` (``keep``, e.g. in tests).

Not reproduced: MAE's fixed 2-D sine-cosine position embeddings (both the encoder's and
the decoder's are learned, as torchvision's ViT learns its own), and its large-batch
AdamW recipe (the optimiser is the run's).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.vision_transformer import EncoderBlock

from betaweighter.errors import LossShapeError
from betaweighter.pretext.base import Pretext, PretextBatch, register_pretext
from betaweighter.pretext.vit import attention_kernel, encode, patch_tokens, vision_transformer

__all__ = ["MAEPretext", "mae_loss", "patchify", "random_masking"]


def patchify(x: Tensor, patch: int) -> Tensor:
    """Images (B, C, H, W) as (B, L, patch * patch * C): L row-major patches, each
    flattened (row, column, channel)."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise LossShapeError(f"images of {h}x{w} px do not split into {patch} px patches")
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), -1)


def random_masking(batch: int, length: int, mask_ratio: float,
                   device: torch.device | str = "cpu") -> Tensor:
    """The indices of the visible patches, (batch, K) with K = round(length * (1 -
    mask_ratio)) clipped to [1, length - 1]: a uniformly random subset per image, drawn
    from torch's default generator (so `MetaWeighter` replays it)."""
    keep = min(max(int(round(length * (1.0 - mask_ratio))), 1), length - 1)
    noise = torch.rand(batch, length, device=device)
    return noise.argsort(dim=1)[:, :keep]


def mae_loss(out: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Per image (B,): the mean over its masked patches of the per-patch mean squared
    error. `out` = (predictions (B, L, P), targets (B, L, P), mask (B, L), 1 = masked),
    what `MAEPretext.forward` returns."""
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise LossShapeError("mae_loss expects (predictions, targets, mask) from "
                             "MAEPretext.forward")
    pred, target, mask = out
    if pred.shape != target.shape or pred.dim() != 3 or mask.shape != pred.shape[:2]:
        raise LossShapeError(f"mae_loss needs predictions and targets (B, L, P) and a mask "
                             f"(B, L), got {tuple(pred.shape)}, {tuple(target.shape)} and "
                             f"{tuple(mask.shape)}")
    per_patch = (pred - target.to(pred.dtype)).pow(2).mean(-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum(1) / mask.sum(1)


@register_pretext("mae", models=("vit_tiny",))
class MAEPretext(Pretext):
    """MAE on a `models.vit_tiny` backbone (any `Backbone` whose ``encoder`` is a
    torchvision `VisionTransformer`).

    The decoder embeds the encoder's tokens to `decoder_dim`, fills the hidden positions
    with a learned mask token, adds learned position embeddings, and runs
    `decoder_layers` torchvision `EncoderBlock`s (`decoder_heads` heads, MLP 4x) and a
    linear map to each patch's pixels. `norm_pix_loss`: targets normalised per patch (the
    paper's default), else raw (normalised-image) pixels. The backbone's classification
    head is unused and frozen, so checkpoints rebuild with `models.load_backbone`.

    ``forward(x, keep=None)`` returns (predictions, targets, mask) for `mae_loss`, drawing
    the mask (`random_masking`) unless `keep` gives the visible patches' indices.
    """

    copies = 1

    def __init__(self, backbone: nn.Module, *, mask_ratio: float = 0.75,
                 decoder_dim: int = 128, decoder_layers: int = 2, decoder_heads: int = 4,
                 norm_pix_loss: bool = True) -> None:
        super().__init__()
        vit = vision_transformer(backbone, "pretext mae")
        if not 0.0 < float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}")
        for name, value in (("decoder_dim", decoder_dim), ("decoder_layers", decoder_layers),
                            ("decoder_heads", decoder_heads)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if decoder_dim % decoder_heads:
            raise ValueError(f"decoder_dim ({decoder_dim}) must be a multiple of "
                             f"decoder_heads ({decoder_heads})")
        self.backbone = backbone
        head = getattr(backbone, "head", None)
        if isinstance(head, nn.Module):
            head.requires_grad_(False)
        self.mask_ratio, self.norm_pix_loss = float(mask_ratio), bool(norm_pix_loss)
        self.patch = int(vit.patch_size)
        self.length = (int(vit.image_size) // self.patch) ** 2
        d = int(decoder_dim)
        self.decoder_embed = nn.Linear(vit.hidden_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d).normal_(std=0.02))
        self.decoder_pos = nn.Parameter(torch.zeros(1, self.length + 1, d).normal_(std=0.02))
        self.decoder = nn.Sequential(*[EncoderBlock(int(decoder_heads), d, 4 * d, 0.0, 0.0)
                                       for _ in range(int(decoder_layers))])
        self.decoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.decoder_pred = nn.Linear(d, self.patch ** 2 * vit.conv_proj.in_channels)

    def targets(self, x: Tensor) -> Tensor:
        """What the decoder predicts for each patch (B, L, P): its pixels, normalised by
        the patch's mean and variance when `norm_pix_loss`."""
        t = patchify(x, self.patch)
        if self.norm_pix_loss:
            mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
            t = (t - mean) / (var + 1e-6).sqrt()
        return t.detach()

    def forward(self, x: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        vit = self.backbone.encoder
        tokens = patch_tokens(vit, x)
        b, length, dim = tokens.shape
        if keep is None:
            keep = random_masking(b, length, self.mask_ratio, x.device)
        visible = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, dim))
        latent = self.decoder_embed(encode(vit, visible))  # (B, 1 + K, d)
        d = latent.shape[-1]
        hidden = self.mask_token.to(latent.dtype).expand(b, length - keep.shape[1], d)
        # all patches in a shuffled order (visible first), then back to patch order
        order = torch.cat([keep, _complement(keep, length)], dim=1)
        restore = order.argsort(dim=1)
        full = torch.cat([latent[:, 1:], hidden], dim=1)
        full = full.gather(1, restore.unsqueeze(-1).expand(-1, -1, d))
        h = torch.cat([latent[:, :1], full], dim=1) + self.decoder_pos.to(latent.dtype)
        with attention_kernel():
            h = self.decoder_norm(self.decoder(h))
        pred = self.decoder_pred(h[:, 1:])
        mask = torch.ones(b, length, device=x.device)
        mask.scatter_(1, keep, 0.0)
        return pred, self.targets(x), mask

    def batch(self, x: Tensor) -> PretextBatch:
        return PretextBatch(x, mae_loss, self.copies)


def _complement(keep: Tensor, length: int) -> Tensor:
    """Per row, the indices in range(length) that `keep` lacks, ascending: (B, L - K)."""
    hidden = torch.ones(keep.shape[0], length, dtype=torch.bool, device=keep.device)
    hidden.scatter_(1, keep, False)
    return hidden.nonzero()[:, 1].view(keep.shape[0], -1)
