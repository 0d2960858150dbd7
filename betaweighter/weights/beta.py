"""Beta-distributed instance weights: the BDW method (Ericsson, Gouk and Hospedales,
"Don't Wait, Just Weight", arXiv:2006.12360).

Each instance i has Beta(alpha_i, beta_i) over its weight. Training uses one
reparameterised sample per instance per step; the mean is for reporting and the CDF for
uncertainty-aware pruning (drop i when P(w_i <= epsilon) is large).

The concentrations are stored as their logarithms (``exp`` maps them to positive values, as
in the reference code) and are kept in [min_concentration, max_concentration] by
projection after every optimiser step, not by a clamp inside the forward: a clamp passes
no gradient at its bound, so an instance pushed onto it would never come back.
"""

from __future__ import annotations

import math

import torch
from scipy.special import betainc
from torch import Tensor, nn
from torch.distributions import Beta, kl_divergence

from betaweighter.weights.base import LearnedWeights, register_weighting

__all__ = ["ESTIMATORS", "BetaWeights"]

ESTIMATORS = ("reparam", "mean")


@register_weighting("bdw")
class BetaWeights(LearnedWeights):
    """One Beta(alpha_i, beta_i) per instance.

    Args:
        num_instances: size of the unlabelled pool.
        init_alpha: starting alpha of every instance (with init_beta; Beta(1, 1) is
            uniform, mean 0.5).
        init_beta: starting beta of every instance.
        prior: optional (alpha_0, beta_0) of a Beta prior. With ``kl_weight > 0`` the mean
            over the batch of KL(q_i || prior), times ``kl_weight``, joins the meta objective.
            Off by default, as in the reference code.
        kl_weight: coefficient of that KL term.
        min_concentration: the concentrations are projected into [min_concentration,
            max_concentration] after every optimiser step, so no learning rate can push
            them to 0 or infinity.
        max_concentration: the upper end of that range.
        sample_eps: samples are clamped to [eps, 1 - eps] (a Beta sample can round to
            exactly 0 or 1 in float32); the clamp passes the gradient straight through, so
            an instance whose samples all fall outside keeps learning.
        estimator: how the meta-gradient reaches the concentrations. ``"reparam"`` (the
            paper): through the sample, by implicit reparameterisation. ``"mean"``: the
            weight's value is still the sample, but its gradient is that of the Beta mean
            alpha / (alpha + beta), which removes the sampling noise of the gradient; it
            moves the mean only (alpha * beta stays fixed).
    """

    row_parameters = ("log_alpha", "log_beta")

    def __init__(
        self,
        num_instances: int,
        init_alpha: float = 1.0,
        init_beta: float = 1.0,
        prior: tuple[float, float] | None = None,
        kl_weight: float = 0.0,
        min_concentration: float = 1e-2,
        max_concentration: float = 1e3,
        sample_eps: float = 1e-6,
        estimator: str = "reparam",
    ) -> None:
        super().__init__(num_instances)
        if not 0 < min_concentration < max_concentration < math.inf:
            raise ValueError("need 0 < min_concentration < max_concentration < inf, got "
                             f"{min_concentration} and {max_concentration}")
        for name, value in (("init_alpha", init_alpha), ("init_beta", init_beta)):
            if not min_concentration <= value <= max_concentration:
                raise ValueError(f"{name}={value} is outside [{min_concentration}, "
                                 f"{max_concentration}]")
        if not (kl_weight >= 0 and math.isfinite(kl_weight)):
            raise ValueError(f"kl_weight must be a finite number >= 0, got {kl_weight}")
        if kl_weight > 0 and prior is None:
            raise ValueError("kl_weight > 0 needs a prior=(alpha_0, beta_0)")
        if prior is not None and (len(prior) != 2 or min(prior) <= 0):
            raise ValueError(f"prior must be two positive numbers (alpha_0, beta_0), got {prior}")
        if not 0 < sample_eps < 0.5:
            raise ValueError(f"sample_eps must be in (0, 0.5), got {sample_eps}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        self.log_alpha = nn.Parameter(torch.full((num_instances,), math.log(init_alpha)))
        self.log_beta = nn.Parameter(torch.full((num_instances,), math.log(init_beta)))
        self.prior = None if prior is None else (float(prior[0]), float(prior[1]))
        self.kl_weight = float(kl_weight)
        self.min_concentration = float(min_concentration)
        self.max_concentration = float(max_concentration)
        self.sample_eps = float(sample_eps)
        self.estimator = estimator
        self.init_alpha, self.init_beta = float(init_alpha), float(init_beta)

    def init_cdf(self, value: float) -> float:
        """P(w <= value) under the starting Beta(init_alpha, init_beta)."""
        return float(betainc(self.init_alpha, self.init_beta, min(max(float(value), 0.0), 1.0)))

    def concentrations(self, indices: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(alpha, beta) for `indices` (all instances when None), differentiable."""
        rows = self._rows(indices)
        return self.log_alpha[rows].exp(), self.log_beta[rows].exp()

    def distribution(self, indices: Tensor | None = None) -> Beta:
        return Beta(*self.concentrations(indices))

    def sample(self, indices: Tensor, losses: Tensor | None = None) -> Tensor:
        a, b = self.concentrations(indices)
        if self.estimator == "mean":
            with torch.no_grad():
                w = Beta(a, b).sample().clamp(self.sample_eps, 1.0 - self.sample_eps)
            m = a / (a + b)
            return w + (m - m.detach())
        w = Beta(a, b).rsample()
        return w + (w.detach().clamp(self.sample_eps, 1.0 - self.sample_eps) - w.detach())

    def regulariser(self, indices: Tensor) -> Tensor:
        if self.kl_weight == 0.0 or self.prior is None:
            return torch.zeros((), device=self.device, dtype=self.log_alpha.dtype)
        q = self.distribution(indices)
        alpha_0, beta_0 = self.prior
        p = Beta(torch.full_like(q.concentration1, alpha_0),
                 torch.full_like(q.concentration1, beta_0))
        return self.kl_weight * kl_divergence(q, p).mean()

    @torch.no_grad()
    def project_(self) -> None:
        lo, hi = math.log(self.min_concentration), math.log(self.max_concentration)
        for p in (self.log_alpha, self.log_beta):
            torch.nan_to_num_(p, nan=0.0, posinf=hi, neginf=lo)
            p.clamp_(lo, hi)

    @torch.no_grad()
    def mean(self, indices: Tensor | None = None) -> Tensor:
        a, b = self.concentrations(indices)
        return a / (a + b)

    @torch.no_grad()
    def std(self, indices: Tensor | None = None) -> Tensor:
        a, b = self.concentrations(indices)
        s = a + b
        return (a * b / (s * s * (s + 1))).sqrt()

    @torch.no_grad()
    def cdf(self, value: float, indices: Tensor | None = None) -> Tensor:
        """P(w_i <= value), the regularised incomplete beta function (scipy, float64); 0
        below 0 and 1 above 1."""
        a, b = self.concentrations(indices)
        x = min(max(float(value), 0.0), 1.0)
        out = betainc(a.double().cpu().numpy(), b.double().cpu().numpy(), x)
        return torch.as_tensor(out, device=a.device)
