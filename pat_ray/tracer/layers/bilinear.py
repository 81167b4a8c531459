"""``nn.Bilinear``: ``y[o] = x1 . W[o] . x2 + b[o]`` with a weight of shape (out, in1, in2), the
two inputs' features on their last axis. Each input's channels are the weight's axis 1 and
axis 2 respectively, so both prune (with whatever produced them) as its output does; its cost
is out x in1 x in2 per position, the product of three widths (``Term.factor``)."""

from __future__ import annotations

import math
from collections.abc import Hashable

import torch
from torch import nn

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layers.family import Cut, LayerCall, LayerFamily, Rewrite, chained, kept_indices, select
from pat_ray.tracer.layers.registry import layer_family
from pat_ray.tracer.layout import Layout, Term


@layer_family(nn.Bilinear)
class Bilinear(LayerFamily):
    counts_macs = True
    timed = True
    tensor_inputs = 2

    def trace(self, call: LayerCall) -> Layout:
        module, builder, name = call.module, call.builder, call.name
        assert isinstance(module, nn.Bilinear)
        first = _features(call, 0, module.in1_features)
        second = _features(call, 1, module.in2_features)
        last = len(call.out_shape) - 1
        builder.add_member(name, "in", first, 1)
        builder.add_member(name, "in", second, 2, input=1)
        out = builder.new_group(module.out_features, name, pinned=name in builder.excluded, axis=last)
        builder.add_member(name, "out", out, 0)
        builder.add_term(
            Term(
                module=name,
                out=out,
                inp=first,
                factor=second,
                macs_per_pair=math.prod(call.out_shape[:-1]),  # once per position (and per sample row)
                params_per_pair=1,
                params_per_out=1 if module.bias is not None else 0,
            )
        )
        return out

    def shrink(self, module: nn.Module, cut: Cut, rewrite: Rewrite) -> None:
        assert isinstance(module, nn.Bilinear)
        keep_out = kept_indices(module.out_features, cut.drop_out)
        keep_first = kept_indices(module.in1_features, cut.drop_of_input(0))
        keep_second = kept_indices(module.in2_features, cut.drop_of_input(1))
        rewrite(module, "weight", chained([select(0, keep_out), select(1, keep_first), select(2, keep_second)]))
        rewrite(module, "bias", select(0, keep_out))
        module.out_features, module.in1_features, module.in2_features = len(keep_out), len(keep_first), len(keep_second)

    def macs(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        weight = module.get_parameter("weight")
        return weight[0].numel() * output.numel()  # in1 x in2 per output value (one sample)

    def rebuilt(self, module: nn.Module, n_in: int, n_out: int) -> nn.Module:
        assert isinstance(module, nn.Bilinear)
        return nn.Bilinear(n_in, module.in2_features, n_out, bias=module.bias is not None)

    def timing_key(self, module: nn.Module, n_in: int, n_out: int) -> tuple[Hashable, ...]:
        assert isinstance(module, nn.Bilinear)
        return ("Bilinear", module.bias is not None, n_in, module.in2_features, n_out)

    def reads_last_axis(self, module: nn.Module, shape: tuple[int, ...]) -> bool:
        return len(shape) > 2


def _features(call: LayerCall, input: int, width: int) -> Layout:
    """The layout of input ``input``, whose features must be its last axis; an input whose
    channels the tracer does not follow (a constant) is fixed features."""
    shape = call.shape_of_input(input)
    layout = call.inputs[input]
    last = len(shape) - 1
    if layout is None:
        return call.builder.fixed_group(width, f"<{call.name} input {input + 1}>", axis=last)
    if layout.axis != last or layout.repeat != 1:
        raise UnsupportedModelError(
            f"{call.where}: input {input + 1} of shape {shape} holds its channels on dim {layout.axis}, "
            "not as the last axis's features"
        )
    if call.builder.width(layout) != width:
        raise UnsupportedModelError(
            f"{call.where}: input {input + 1} has {call.builder.width(layout)} features, not {width}"
        )
    return layout
