"""A read-only view of the user's model at substituted (look-ahead) parameters.

Built on `torch.func.functional_call`, so any `nn.Module` works as it is: no layer is
rewritten and nothing on the user's model is patched. Buffers are cloned, so a forward in
train mode (BatchNorm with batch statistics) leaves the real running statistics alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["LookaheadModel"]


class _BoundMethod(nn.Module):
    """Exposes ``module.<method>`` as ``forward`` so functional_call can run it."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.inner = module
        self.method = method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, self.method)(*args, **kwargs)


class LookaheadModel:
    """Call it like the model; ``.features(x)`` and ``.call("method", ...)`` run other
    methods of the model with the same substituted parameters."""

    def __init__(
        self, module: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor] | None = None
    ) -> None:
        self.module = module
        self.params = params
        if buffers is None:
            buffers = {n: b.clone() for n, b in module.named_buffers()}
        self.buffers = buffers
        self._bound: dict[str, _BoundMethod] = {}

    @property
    def training(self) -> bool:
        return self.module.training

    @property
    def device(self) -> torch.device:
        for p in self.params.values():
            return p.device
        return torch.device("cpu")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.module, (self.params, self.buffers), args, kwargs)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if not callable(getattr(self.module, method, None)):
            raise AttributeError(
                f"{type(self.module).__name__} has no method {method!r}; give the objective "
                "a `features=` callable that maps (model, x) to embeddings"
            )
        bound = self._bound.get(method)
        if bound is None:
            bound = self._bound[method] = _BoundMethod(self.module, method)
        params = {f"inner.{k}": v for k, v in self.params.items()}
        buffers = {f"inner.{k}": v for k, v in self.buffers.items()}
        return functional_call(bound, (params, buffers), args, kwargs)

    def features(self, x: Tensor) -> Tensor:
        return self.call("features", x)
