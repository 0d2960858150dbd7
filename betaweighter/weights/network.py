"""A weighting network in the style of Meta-Weight-Net (Shu et al., NeurIPS 2019).

Instead of one parameter per instance, a small MLP maps what is known about an instance
now, its current pretext loss (optionally with fixed per-instance features), to a weight
in (0, 1) (a sigmoid: exactly 0 or 1 only where it saturates in floating point). The
MLP's parameters are meta-learned through the same look-ahead as BDW. Since the weight is
a function of the loss rather than of the index, the network also weights instances it has
never seen: `weight_of` evaluates it on any losses.

Differences from Shu et al., all documented choices:

* The update is BDW's single pass ("don't wait"): the real step uses the weights the
  network gave before its meta update. Meta-Weight-Net recomputes the weights with the
  updated network first, which needs a second forward; that variant is not offered.
* The output is not renormalised over the batch (Shu et al. divide by the batch sum);
  use ``MetaWeighter(normalise=True)`` for that.

For pruning and plots, `mean` evaluates the network on each instance's most recently seen
loss. An instance not seen yet gets the average of the recorded losses as its input (or
zero when none is recorded), so every instance has a finite weight. `std` is zero and
`cdf` thresholds the mean (the point-mass fallback of `InstanceWeights`).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from betaweighter.weights.base import LearnedWeights, register_weighting

__all__ = ["WeightNet"]


@register_weighting("weightnet")
class WeightNet(LearnedWeights):
    """Weights from an MLP of the per-instance loss (Meta-Weight-Net style).

    Args:
        num_instances: size of the unlabelled pool.
        hidden: width of the hidden layer (100, as in Shu et al.).
        features: optional (num_instances, F) tensor of fixed per-instance descriptors
            (for example embeddings from another model, or nearest-neighbour distances)
            given to the network next to the loss. Not part of the `state_dict` (it is an
            input, like the dataset): build the object with the same tensor before loading.
        max_abs: the MLP's parameters are clamped to [-max_abs, max_abs] after every
            optimiser step, so no learning rate makes them overflow.

    The output layer starts at zero, so every instance starts at weight 0.5 (BDW's starting
    mean). The network's parameters are dense (``row_parameters`` is empty): a
    `WeightOptimizer` steps all of them every meta update. Use Adam at 1e-3 (Meta-Weight-
    Net's setting: ``weight_optimizer=WeightOptimizer("adam", lr=1e-3, normalise=False)``);
    on the label-noise test problem 1e-2 sometimes saturated the sigmoid at 1 for every
    loss.
    """

    features: Tensor | None
    last_loss: Tensor

    def __init__(
        self,
        num_instances: int,
        hidden: int = 100,
        features: Tensor | None = None,
        max_abs: float = 1e3,
    ) -> None:
        super().__init__(num_instances)
        if int(hidden) < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if not max_abs > 0:
            raise ValueError(f"max_abs must be > 0, got {max_abs}")
        if features is not None:
            features = torch.as_tensor(features, dtype=torch.get_default_dtype())
            if features.dim() != 2 or features.shape[0] != num_instances:
                raise ValueError(
                    f"features must have shape (num_instances, F) = ({num_instances}, F), got "
                    f"{tuple(features.shape)}"
                )
        n_in = 1 + (0 if features is None else features.shape[1])
        self.net = nn.Sequential(nn.Linear(n_in, int(hidden)), nn.ReLU(),
                                 nn.Linear(int(hidden), 1))
        # Every instance starts at weight 0.5, BDW's starting mean, with no random tilt.
        out = cast(nn.Linear, self.net[2])
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.max_abs = float(max_abs)
        self.register_buffer("features", features, persistent=False)
        self.register_buffer("last_loss", torch.full((num_instances,), float("nan")))

    # -- the network --------------------------------------------------------------------
    def weight_of(self, losses: Tensor, features: Tensor | None = None) -> Tensor:
        """The network's weight for instances with these losses (and features, when the
        network was built with them), seen before or not. Differentiable."""
        param = cast(nn.Linear, self.net[0]).weight
        x = torch.as_tensor(losses).to(device=param.device, dtype=param.dtype).reshape(-1, 1)
        if self.features is not None:
            if features is None:
                raise ValueError("this WeightNet was built with features: pass them too")
            x = torch.cat([x, features.to(x)], dim=1)
        return torch.sigmoid(self.net(x)).squeeze(1)

    # -- the interface ------------------------------------------------------------------
    def sample(self, indices: Tensor, losses: Tensor | None = None) -> Tensor:
        """Weights for the batch from its current losses; without `losses`, from each
        instance's last observed loss."""
        rows = cast(Tensor, self._rows(indices))  # a Tensor, as `indices` is one
        inputs = self._recorded(rows) if losses is None else self._checked(losses, rows)
        return self.weight_of(inputs, self._features(rows))

    @torch.no_grad()
    def observe(self, indices: Tensor, losses: Tensor) -> None:
        """Record the batch's losses: `mean` reports the network's weight of each
        instance's most recent loss."""
        rows = cast(Tensor, self._rows(indices))  # a Tensor, as `indices` is one
        self.last_loss[rows] = self._checked(losses, rows).to(self.last_loss)

    @torch.no_grad()
    def project_(self) -> None:
        for p in self.net.parameters():
            torch.nan_to_num_(p, nan=0.0, posinf=self.max_abs, neginf=-self.max_abs)
            p.clamp_(-self.max_abs, self.max_abs)

    @torch.no_grad()
    def mean(self, indices: Tensor | None = None) -> Tensor:
        rows = self._rows(indices)
        return self.weight_of(self._recorded(rows), self._features(rows))

    @torch.no_grad()
    def std(self, indices: Tensor | None = None) -> Tensor:
        return torch.zeros_like(self.last_loss[self._rows(indices)])

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _checked(losses: Tensor, rows: Tensor) -> Tensor:
        inputs = torch.as_tensor(losses).detach().reshape(-1)
        if inputs.numel() != rows.numel():
            raise ValueError(f"losses has {inputs.numel()} entries for {rows.numel()} indices")
        return inputs

    def _recorded(self, rows: Tensor | slice) -> Tensor:
        seen = torch.isfinite(self.last_loss)
        fill = self.last_loss[seen].mean() if bool(seen.any()) else self.last_loss.new_zeros(())
        return torch.where(seen[rows], self.last_loss[rows], fill)

    def _features(self, rows: Tensor | slice) -> Tensor | None:
        return None if self.features is None else self.features[rows]
