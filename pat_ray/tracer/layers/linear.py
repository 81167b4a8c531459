"""``nn.Linear``: on (N, features), or once per position on a channels-last tensor (N, ..., C)
such as ConvNeXt's MLP after a permute; over another axis than the channels' (a 1-D signal's
length) it leaves the channels where they are and keeps its own size."""

from __future__ import annotations

import math
from collections.abc import Hashable

import torch
from torch import nn

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layers.family import Cut, LayerCall, LayerFamily, Rewrite, chained, kept_indices, select
from pat_ray.tracer.layers.registry import layer_family
from pat_ray.tracer.layout import Layout, Term


@layer_family(nn.Linear)
class Linear(LayerFamily):
    counts_macs = True
    timed = True

    def trace(self, call: LayerCall) -> Layout:
        builder, name, module, layout = call.builder, call.name, call.module, call.layout
        assert isinstance(module, nn.Linear)
        in_shape = call.in_shape
        last = len(in_shape) - 1
        if layout.axis != last and layout.repeat == 1:
            if not builder.is_pinned(layout):
                return _across(call, module, in_shape)
            layout = builder.fixed_group(in_shape[-1], f"<{name} input>", axis=last)  # (N, T, D) from outside
        if layout.axis != last:  # with a repeat: merged heads, each head_dim inputs
            raise UnsupportedModelError(
                f"{call.where}: Linear on a tensor of shape {in_shape} whose channels are on dim {layout.axis}, "
                "not on the last one"
            )
        if builder.width(layout) != module.in_features:
            raise UnsupportedModelError(f"{call.where}: input width does not match in_features")
        builder.add_member(name, "in", layout, 1)
        out = builder.new_group(module.out_features, name, pinned=name in builder.excluded, axis=last)
        builder.add_member(name, "out", out, 0)
        per_out = 1 if module.bias is not None else 0
        positions = math.prod(in_shape[:-1])  # once per pixel or token, and per window folded into dim 0
        builder.add_term(
            Term(
                module=name,
                out=out,
                inp=layout,
                macs_per_pair=positions,
                params_per_pair=1,
                params_per_out=per_out,
            )
        )
        return out

    def shrink(self, module: nn.Module, cut: Cut, rewrite: Rewrite) -> None:
        assert isinstance(module, nn.Linear)
        keep_out = kept_indices(module.out_features, cut.drop_out)
        keep_in = kept_indices(module.in_features, cut.drop_in)
        rewrite(module, "weight", chained([select(0, keep_out), select(1, keep_in)]))
        rewrite(module, "bias", select(0, keep_out))
        module.out_features, module.in_features = len(keep_out), len(keep_in)

    def macs(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        return module.get_parameter("weight")[0].numel() * output.numel()  # in_features per output value (one sample)

    def rebuilt(self, module: nn.Module, n_in: int, n_out: int) -> nn.Module:
        assert isinstance(module, nn.Linear)
        return nn.Linear(n_in, n_out, bias=module.bias is not None)

    def timing_key(self, module: nn.Module, n_in: int, n_out: int) -> tuple[Hashable, ...]:
        assert isinstance(module, nn.Linear)
        return ("Linear", module.bias is not None, n_in, n_out)

    def reads_last_axis(self, module: nn.Module, shape: tuple[int, ...]) -> bool:
        return len(shape) > 2


def _across(call: LayerCall, module: nn.Linear, in_shape: tuple[int, ...]) -> Layout:
    """A Linear over another axis than the channels' (over a 1-D signal's length): it runs once
    per channel, which it leaves where they are; its own weights never change size."""
    layout = call.layout
    rows = math.prod(in_shape[:-1]) // in_shape[layout.axis]  # the other axes it runs along
    call.builder.add_term(
        Term(module=call.name, out=layout, macs_per_pair=module.in_features * module.out_features * rows)
    )
    call.builder.count_weights_as_they_are(call.name)
    return layout
