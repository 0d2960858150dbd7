"""Sinkhorn-Knopp: SwAV's soft assignment of a batch to prototypes under equipartition.

Caron, Misra, Mairal, Goyal, Bojanowski and Joulin, "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments" (SwAV), NeurIPS 2020, arXiv:2006.09882, after
Asano, Rupprecht and Vedaldi (ICLR 2020) and Cuturi (NeurIPS 2013). Given the scores
s_bk = z_b . c_k of B embeddings against K prototypes, the codes Q (B x K) maximise
tr(Q^T S) + epsilon H(Q) over the transportation polytope where every embedding's code
sums to 1 and every prototype receives B / K of the mass. The solution is
Q = diag(u) exp(S / epsilon) diag(v); a few alternating normalisations (SwAV: 3) of the
columns (prototypes) and rows (embeddings) approximate u and v. The last normalisation is
the embeddings', so each code sums to 1 exactly and the prototype marginals approximately.

Computed in the log domain (logsumexp), which gives SwAV's values without overflow or
underflow whatever the scale of the scores. The normalisation couples every row of the
batch, as NT-Xent's denominator does; see `swav.py` for how that meets instance weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from betaweighter.errors import LossShapeError

__all__ = ["sinkhorn"]


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """SwAV's codes (B, K) for `scores` (B, K): rows sum to 1, columns to about B / K.

    Args:
        scores: embeddings against prototypes (cosine similarities in SwAV).
        epsilon: the entropic regularisation; smaller gives harder assignments.
        iterations: alternating normalisations (prototypes, then embeddings).

    Without gradient, in at least float32. For the codes of a global batch under
    torch.distributed, gather the scores first (`pretext.gather.gather_rows`)."""
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    if scores.dim() != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise LossShapeError(f"Sinkhorn-Knopp needs scores (B, K) of B embeddings against K "
                             f"prototypes, got shape {tuple(scores.shape)}")
    b, k = scores.shape
    log_q = scores.detach().to(torch.promote_types(scores.dtype, torch.float32)) / epsilon
    for _ in range(int(iterations)):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(k)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(b)
    return torch.exp(log_q) * b
