"""Beta-distributed instance weights: the BDW method (Ericsson et al., arXiv:2006.12360).

Each instance i has Beta(alpha_i, beta_i) over its weight. Training uses one
reparameterised sample per instance per step; the mean is for reporting and the CDF for
uncertainty-aware pruning (drop i when P(w_i <= epsilon) is large).
"""

from __future__ import annotations

import math

import torch
from scipy.special import betainc
from torch import Tensor, nn
from torch.distributions import Beta, kl_divergence

from betaweighter.weights.base import InstanceWeights


class BetaWeights(InstanceWeights):
    """One Beta(alpha_i, beta_i) per instance.

    Args:
        num_instances: size of the unlabelled pool.
        init_alpha, init_beta: starting concentrations (Beta(1, 1) = uniform, mean 0.5).
        prior: optional (alpha_0, beta_0) of a Beta prior. With ``kl_weight > 0`` the mean
            over the batch of KL(q_i || prior), times ``kl_weight``, joins the meta objective.
            Off by default, as in the reference code.
        kl_weight: coefficient of that KL term.
        min_concentration, max_concentration: bounds that the concentrations are clamped
            to after every optimiser step (and on read), so that no learning rate can push
            them to 0 or infinity.
        sample_eps: samples are clamped to [eps, 1 - eps].

    The concentrations are stored as their logarithms (``exp`` maps them to positive
    values, as in the reference code).
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
    ) -> None:
        super().__init__(num_instances)
        if not 0 < min_concentration < max_concentration < math.inf:
            raise ValueError(
                "need 0 < min_concentration < max_concentration < inf, got "
                f"{min_concentration} and {max_concentration}"
            )
        for name, value in (("init_alpha", init_alpha), ("init_beta", init_beta)):
            if not min_concentration <= value <= max_concentration:
                raise ValueError(
                    f"{name}={value} is outside [{min_concentration}, {max_concentration}]"
                )
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        if kl_weight > 0 and prior is None:
            raise ValueError("kl_weight > 0 needs a prior=(alpha_0, beta_0)")
        if prior is not None and (len(prior) != 2 or min(prior) <= 0):
            raise ValueError(f"prior must be two positive numbers (alpha_0, beta_0), got {prior}")
        if not 0 < sample_eps < 0.5:
            raise ValueError(f"sample_eps must be in (0, 0.5), got {sample_eps}")
        self.log_alpha = nn.Parameter(torch.full((num_instances,), math.log(init_alpha)))
        self.log_beta = nn.Parameter(torch.full((num_instances,), math.log(init_beta)))
        self.prior = None if prior is None else (float(prior[0]), float(prior[1]))
        self.kl_weight = float(kl_weight)
        self._log_min = math.log(min_concentration)
        self._log_max = math.log(max_concentration)
        self.sample_eps = float(sample_eps)

    def concentrations(self, indices: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(alpha, beta) for `indices` (all instances when None), clamped to the bounds."""
        rows = self._rows(indices)
        la = self.log_alpha[rows].clamp(self._log_min, self._log_max)
        lb = self.log_beta[rows].clamp(self._log_min, self._log_max)
        return la.exp(), lb.exp()

    def distribution(self, indices: Tensor | None = None) -> Beta:
        return Beta(*self.concentrations(indices))

    def sample(self, indices: Tensor, losses: Tensor | None = None) -> Tensor:
        w = self.distribution(indices).rsample()
        return w.clamp(self.sample_eps, 1.0 - self.sample_eps)

    def regulariser(self, indices: Tensor) -> Tensor:
        if self.kl_weight == 0.0 or self.prior is None:
            return torch.zeros((), device=self.device, dtype=self.log_alpha.dtype)
        q = self.distribution(indices)
        p = Beta(*(torch.full_like(q.concentration1, c) for c in self.prior))
        return self.kl_weight * kl_divergence(q, p).mean()

    @torch.no_grad()
    def project_(self) -> None:
        for p in (self.log_alpha, self.log_beta):
            torch.nan_to_num_(p, nan=0.0)
            p.clamp_(self._log_min, self._log_max)

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
        """P(w_i <= value), the regularised incomplete beta function (scipy, float64)."""
        a, b = self.concentrations(indices)
        out = betainc(a.double().cpu().numpy(), b.double().cpu().numpy(), float(value))
        return torch.as_tensor(out, device=a.device)
