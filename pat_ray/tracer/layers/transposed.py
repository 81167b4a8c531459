"""Transposed convolutions (1-D, 2-D, 3-D), groups = 1: their weight holds the input channels
on dim 0 and the output channels on dim 1, and each *input* pixel costs ``in * out * kernel``
MACs (a conv's cost is per output pixel)."""

from __future__ import annotations

import math
from collections.abc import Hashable

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layers.conv import conv_hyper, conv_input, conv_like
from pat_ray.tracer.layers.family import Cut, LayerCall, LayerFamily, Rewrite, chained, kept_indices, select
from pat_ray.tracer.layers.registry import layer_family
from pat_ray.tracer.layout import Layout, Term

TRANSPOSED_CONV_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@layer_family(*TRANSPOSED_CONV_TYPES)
class TransposedConv(LayerFamily):
    counts_macs = True
    timed = True

    def trace(self, call: LayerCall) -> Layout:
        builder, name = call.builder, call.name
        module, layout = conv_input(call)
        if module.groups != 1:
            raise UnsupportedModelError(
                f"{call.where}: a grouped transposed conv (groups={module.groups}) is not supported"
            )
        kernel = math.prod(module.kernel_size)
        builder.add_member(name, "in", layout, 0)
        out = builder.new_group(module.out_channels, name, pinned=name in builder.excluded)
        builder.add_member(name, "out", out, 1)
        per_out = 1 if module.bias is not None else 0
        builder.add_term(
            Term(
                module=name,
                out=out,
                inp=layout,
                macs_per_pair=kernel * math.prod(call.in_shape[:1] + call.in_shape[2:]),
                params_per_pair=kernel,
                params_per_out=per_out,
            )
        )
        return out

    def shrink(self, module: nn.Module, cut: Cut, rewrite: Rewrite) -> None:
        assert isinstance(module, _ConvNd)
        keep_out = kept_indices(module.out_channels, cut.drop_out)
        keep_in = kept_indices(module.in_channels, cut.drop_in)
        rewrite(module, "weight", chained([select(0, keep_in), select(1, keep_out)]))
        rewrite(module, "bias", select(0, keep_out))
        module.in_channels, module.out_channels = len(keep_in), len(keep_out)

    def macs(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        return module.get_parameter("weight").numel() * inputs[0][:, 0].numel()  # per input pixel (one sample)

    def rebuilt(self, module: nn.Module, n_in: int, n_out: int) -> nn.Module:
        assert isinstance(module, _ConvNd)
        return conv_like(module, n_in, n_out, module.groups, output_padding=module.output_padding)

    def timing_key(self, module: nn.Module, n_in: int, n_out: int) -> tuple[Hashable, ...]:
        assert isinstance(module, _ConvNd)
        return (type(module).__name__, conv_hyper(module), module.groups, n_in, n_out)
