"""How the latency probe times a product between activations (attention's ``q @ k^T`` and
``weights @ v``), which no layer runs: two random factors of the traced shapes, with the
heads (or summed channels) at the widths being timed, multiplied forward and backward.

Attention's products grow with tokens squared: on a long sequence they are much of a block's
time, and a latency budget that did not see them would credit pruned heads with nothing but
their projections.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import nn

from pat_ray.tracer.graph import ProductShape
from pat_ray.tracer.layers.family import LayerFamily


class TimedProduct(nn.Module):
    """Stands for one product in the probe's plans (it has no module in the model)."""

    def __init__(self, shape: ProductShape) -> None:
        super().__init__()
        self.shape = shape


class _Factors(nn.Module):
    """The product at given widths; its factors are made on the first call, for the batch
    size and device of the input the timer hands it (whose values it does not read)."""

    def __init__(self, shape: ProductShape, n_in: int, n_out: int) -> None:
        super().__init__()
        self.shape, self.n_in, self.n_out = shape, n_in, n_out
        self.factors: nn.ParameterList | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factors is None:
            shapes = self.shape.at(self.n_in, self.n_out, x.shape[0])
            self.factors = nn.ParameterList(nn.Parameter(torch.randn(s, device=x.device)) for s in shapes)
        left, right = self.factors
        product: torch.Tensor = left @ right
        return product


class ProductTiming(LayerFamily):
    """The probe's family for ``TimedProduct``: rebuilt as two factors, keyed by their shapes."""

    types = (TimedProduct,)
    timed = True

    def rebuilt(self, module: nn.Module, n_in: int, n_out: int) -> nn.Module:
        assert isinstance(module, TimedProduct)
        return _Factors(module.shape, n_in, n_out)

    def timing_key(self, module: nn.Module, n_in: int, n_out: int) -> tuple[Hashable, ...]:
        assert isinstance(module, TimedProduct)
        return ("product", module.shape.at(n_in, n_out, 1), module.shape.batched)
