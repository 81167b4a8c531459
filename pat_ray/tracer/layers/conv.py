"""Convolutions (1-D, 2-D, 3-D): plain, depthwise and grouped.

A plain conv starts a new group for its outputs and reads its input's channels as an ``in``
member. A depthwise conv (groups == in == out) maps channel i to channel i, so it follows its
input's group. A grouped conv with in == out (ResNeXt, RegNet) keeps its groups and narrows
each: its group may only shrink by the same count in every conv group. A grouped conv with
in != out (ShuffleNet V1's 1x1s) keeps its input whole and shrinks its outputs per conv group.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layers.family import Cut, LayerCall, LayerFamily, Reindex, Rewrite, chained, kept_indices, select
from pat_ray.tracer.layers.registry import layer_family
from pat_ray.tracer.layout import Layout, Term

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, CONV_TYPES) and module.groups > 1 and module.groups == module.in_channels


def conv_hyper(module: _ConvNd) -> tuple[Hashable, ...]:
    """A conv's hyper-parameters other than its widths and groups (what a timing depends on)."""
    return (
        module.kernel_size,
        module.stride,
        module.padding,
        module.output_padding,
        module.dilation,
        module.bias is not None,
        module.padding_mode,
    )


def conv_like(module: _ConvNd, n_in: int, n_out: int, groups: int, **extra: Any) -> nn.Module:
    """A fresh conv of ``module``'s class and hyper-parameters at other widths."""
    kind: Any = type(module)
    built: nn.Module = kind(
        n_in,
        n_out,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=groups,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
        **extra,
    )
    return built


def conv_input(call: LayerCall) -> tuple[_ConvNd, Layout]:
    """A conv's (or transposed conv's) module and input layout: channels on dim 1, as many as
    the layer reads."""
    module = call.module
    assert isinstance(module, _ConvNd)
    layout = call.on_dim1()
    if call.builder.width(layout) != module.in_channels:
        raise UnsupportedModelError(f"{call.where}: input channels do not match in_channels")
    return module, layout


@layer_family(*CONV_TYPES)
class Conv(LayerFamily):
    counts_macs = True
    timed = True

    def trace(self, call: LayerCall) -> Layout:
        builder, name = call.builder, call.name
        module, layout = conv_input(call)
        # per output map, and per folded sample: the example is one sample, so a dim 0 above 1 is
        # windows or patches folded into the batch, each run through the conv
        kernel, spatial = math.prod(module.kernel_size), math.prod(call.out_shape[2:]) * call.out_shape[0]
        per_out = 1 if module.bias is not None else 0
        groups, cin, cout = module.groups, module.in_channels, module.out_channels
        excluded = name in builder.excluded
        if groups == 1:
            builder.add_member(name, "in", layout, 1)
            out = builder.new_group(cout, name, pinned=excluded)
            builder.add_member(name, "out", out, 0)
            builder.add_term(
                Term(
                    module=name,
                    out=out,
                    inp=layout,
                    macs_per_pair=kernel * spatial,
                    params_per_pair=kernel,
                    params_per_out=per_out,
                )
            )
            return out
        if groups == cin == cout:  # depthwise: channel i in -> channel i out
            if excluded:
                builder.pin(layout)
            builder.add_member(name, "depthwise", layout, 0)
            builder.add_term(
                Term(
                    module=name,
                    out=layout,
                    inp=None,
                    macs_per_pair=kernel * spatial,
                    params_per_pair=kernel,
                    params_per_out=per_out,
                )
            )
            return layout
        parts = builder.leaves(layout).groups
        if cin == cout and len(parts) == 1:  # grouped, e.g. ResNeXt / RegNet
            root = parts[0]
            if builder.subgroups_of(root) not in (None, groups):
                raise UnsupportedModelError(f"{call.where}: channels feed convs of different groups")
            builder.set_subgroups(root, groups)
            if excluded:
                builder.pin(layout)
            builder.add_member(name, "grouped", layout, 0)
            builder.add_term(
                Term(
                    module=name,
                    out=layout,
                    inp=layout,
                    in_divisor=groups,
                    macs_per_pair=kernel * spatial,
                    params_per_pair=kernel,
                    params_per_out=per_out,
                )
            )
            return layout
        # grouped, in != out: the input stays whole, the outputs shrink by the same count in
        # every conv group (each output channel reads only its own group's inputs)
        builder.pin(layout)
        out = builder.new_group(cout, name, pinned=excluded)
        builder.set_subgroups(out.groups[0], groups)
        builder.add_member(name, "out", out, 0)
        builder.add_term(
            Term(
                module=name,
                out=out,
                inp=layout,
                in_divisor=groups,
                macs_per_pair=kernel * spatial,
                params_per_pair=kernel,
                params_per_out=per_out,
            )
        )
        return out

    def shrink(self, module: nn.Module, cut: Cut, rewrite: Rewrite) -> None:
        assert isinstance(module, _ConvNd)
        keep_out = kept_indices(module.out_channels, cut.drop_out)
        if "depthwise" in cut.roles:
            rewrite(module, "weight", select(0, keep_out))
            module.groups = module.in_channels = len(keep_out)
        elif "grouped" in cut.roles:
            rewrite(module, "weight", _grouped_reindex(module, keep_out))
            module.in_channels = len(keep_out)
        else:
            keep_in = kept_indices(module.in_channels, cut.drop_in)  # all of them for groups > 1: its inputs stay
            by_in = [select(1, keep_in)] if module.groups == 1 else []
            rewrite(module, "weight", chained([select(0, keep_out), *by_in]))
            module.in_channels = len(keep_in)
        rewrite(module, "bias", select(0, keep_out))
        module.out_channels = len(keep_out)

    def macs(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        weight = module.get_parameter("weight")
        return weight[0].numel() * output.numel()  # in_channels / groups * kernel, per output value (one sample)

    def rebuilt(self, module: nn.Module, n_in: int, n_out: int) -> nn.Module:
        assert isinstance(module, _ConvNd)
        return conv_like(module, n_in, n_out, n_out if is_depthwise(module) else module.groups)

    def timing_key(self, module: nn.Module, n_in: int, n_out: int) -> tuple[Hashable, ...]:
        assert isinstance(module, _ConvNd)
        groups = n_out if is_depthwise(module) else module.groups
        return (type(module).__name__, conv_hyper(module), groups, n_in, n_out)

    def input_follows_output(self, module: nn.Module) -> bool:
        assert isinstance(module, _ConvNd)
        return module.groups > 1 and module.in_channels == module.out_channels

    def width_step(self, module: nn.Module) -> int:
        assert isinstance(module, _ConvNd)
        return module.groups if 1 < module.groups < module.in_channels else 1


def _grouped_reindex(conv: _ConvNd, keep: torch.Tensor) -> Reindex:
    """Grouped conv with in == out channels: keep the same channels on both sides, so
    each output row keeps the inputs of its own conv group that survived."""
    groups, width = conv.groups, conv.out_channels // conv.groups
    per_group = keep.reshape(groups, -1)  # raises unless every group keeps the same count
    if not torch.equal(per_group // width, torch.arange(groups)[:, None].expand_as(per_group)):
        raise ValueError("grouped conv: kept channels are not balanced across conv groups")
    local = per_group - torch.arange(groups)[:, None] * width

    def fn(t: torch.Tensor) -> torch.Tensor:
        rows = t.index_select(0, keep.to(t.device)).reshape(groups, -1, *t.shape[1:])
        parts = [rows[g].index_select(1, local[g].to(t.device)) for g in range(groups)]
        return torch.cat(parts)

    return fn
