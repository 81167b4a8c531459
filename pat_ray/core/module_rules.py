"""How the tracer treats a call to a module: which channels it reads, makes or follows.

A conv, transposed conv or Linear starts a new group for its outputs and records its input
layout as an ``in`` member; a norm or depthwise conv follows its input's group. Modules a
plugin declared (``custom_layers``) come first. Linear and LayerNorm also work on
channels-last tensors (ConvNeXt's permute -> LayerNorm -> Linear), where the channels are on
the last axis; everything else wants them on dim 1.
"""

from __future__ import annotations

import math
from typing import Any

import torch.fx as fx
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrize

from pat_ray.core.custom_layers import rule_for, trace_custom
from pat_ray.core.fx_trace import PieceShape, piece_shapes, shape_of
from pat_ray.core.graph import CONV_TYPES, NORM_TYPES, TRANSPOSED_CONV_TYPES, UnsupportedModelError
from pat_ray.core.layout import GroupBuilder, Layout, Traced
from pat_ray.core.tensor_ops import known_shape, reordered_layout, reshape_layout
from pat_ray.core.tracing_ops import CHANNEL_PINNING_MODULES, PASSTHROUGH_MODULES, REORDERING_MODULES


def visit_module(b: GroupBuilder, node: fx.Node, layout: Layout, name: str | None = None) -> Layout | None:
    """One call of a module (``name``: the module whose weights ``node`` applies, when the node
    is a functional call inside its forward). A module with weights called again (weights
    shared between two places) must keep the same channels in both: its inputs and outputs are
    coupled with the first call's, and only its MACs count again (its parameters exist once)."""
    name = name or str(node.target)
    module = b.model.get_submodule(name)
    terms_before = len(b.raw_terms)
    result = _visit_call(b, node, name, module, layout)
    if _weights_made_at_call_time(module):  # surgery would cut the weight, not what it is made of
        for kept in (layout, result):
            if kept is not None:
                b.pin(kept)
    first = b.calls.get(name)
    if first is None or not any(True for _ in module.parameters()):
        b.calls.setdefault(name, (layout, result))
        return result
    where = f"module {name!r} ({type(module).__name__}), called again"
    b.unify(first[0], layout, where)
    if first[1] is not None and result is not None:
        b.unify(first[1], result, where)
    b.raw_terms[terms_before:] = [(*term[:5], 0, 0) for term in b.raw_terms[terms_before:]]
    return result


def _visit_call(b: GroupBuilder, node: fx.Node, name: str, module: nn.Module, layout: Layout) -> Layout | None:
    where = f"module {name!r} ({type(module).__name__})"
    in_shape = known_shape(node.args[0], where)
    if (rule := rule_for(module)) is not None:  # declared by a plugin: before the built-in kinds
        return trace_custom(b, name, module, rule, layout.on_dim1(where), (in_shape, known_shape(node, where)), where)
    if isinstance(module, CONV_TYPES):
        return _visit_conv(b, name, module, layout.on_dim1(where), known_shape(node, where), where)
    if isinstance(module, TRANSPOSED_CONV_TYPES):
        return _visit_transposed(b, name, module, layout.on_dim1(where), in_shape, where)
    if isinstance(module, nn.Linear):
        return _visit_linear(b, name, module, layout, in_shape, where)
    if isinstance(module, NORM_TYPES):
        b.slots.append((name, "norm", layout.on_dim1(where), 0))
        b.raw_terms.append((name, layout, None, 1, 0, 0, 2 if module.affine else 0))
        return layout
    if isinstance(module, nn.LayerNorm):
        params = [f"{name}.{p}" for p, t in (("weight", module.weight), ("bias", module.bias)) if t is not None]
        return layer_norm_layout(b, name, params, layout, in_shape, module.normalized_shape, where)
    if isinstance(module, nn.GroupNorm):
        return _visit_group_norm(b, name, module, layout, where)
    if isinstance(module, nn.PReLU):  # one slope per channel, or one for all
        if module.num_parameters == 1:
            b.count_fixed(f"{name}.weight")
            return layout
        b.add_param(f"{name}.weight", 0, layout.on_dim1(where), where)
        b.count_param(f"{name}.weight", layout)
        return layout
    if isinstance(module, PASSTHROUGH_MODULES):
        return reshape_layout(b, node, layout, where) if isinstance(module, nn.Flatten | nn.Unflatten) else layout
    if isinstance(module, REORDERING_MODULES):
        return reordered_layout(b, node, layout, where)
    if isinstance(module, CHANNEL_PINNING_MODULES):
        b.pin(layout)
        return layout
    raise UnsupportedModelError(
        f"{where}: pat_ray does not know how this module treats channels; supported: Conv, "
        "ConvTranspose, Linear, BatchNorm, LayerNorm, activations, pooling, dropout, and modules a "
        "plugin declares with pat_ray_register_layers"
    )


def _weights_made_at_call_time(module: nn.Module) -> bool:
    """A layer whose weight is computed from other tensors before each call: a parametrization
    (``parametrizations.spectral_norm`` / ``weight_norm``, whose vectors and magnitudes surgery
    does not slice) or a forward pre-hook (the older ``nn.utils.weight_norm``). Kept whole."""
    return parametrize.is_parametrized(module) or bool(module._forward_pre_hooks)


def kept_whole(module: nn.Module) -> bool:
    """A torch.nn layer with no rule here (LSTM, MultiheadAttention, Embedding, Transformer
    layers...): its forward reads only its inputs and its own weights, so keeping its inputs
    and outputs whole makes it safe to prune everything around it."""
    followed = (*CONV_TYPES, *TRANSPOSED_CONV_TYPES, nn.Linear, *NORM_TYPES, nn.LayerNorm, nn.GroupNorm, nn.PReLU)
    if rule_for(module) is not None or isinstance(
        module, (*followed, *PASSTHROUGH_MODULES, *REORDERING_MODULES, *CHANNEL_PINNING_MODULES)
    ):
        return False
    return str(getattr(type(module).forward, "__module__", "")).startswith("torch.nn.")


def opaque_result(b: GroupBuilder, node: fx.Node, inputs: list[Layout]) -> Traced:
    """A ``kept_whole`` module's call: its inputs pinned, each tensor it returns a new pinned
    group on dim 1 (like a model input), its weights counted as they are."""
    name = str(node.target)
    for layout in inputs:
        b.pin(layout)
    if name not in b.calls:
        b.calls[name] = (Layout(()), None)
        _count_weights_as_they_are(b, name)
    return fresh_result(b, node)


def _count_weights_as_they_are(b: GroupBuilder, name: str) -> None:
    for param, _ in b.model.get_submodule(name).named_parameters():
        b.count_fixed(f"{name}.{param}")


def fresh_result(b: GroupBuilder, node: fx.Node) -> Traced:
    """New pinned groups for every tensor ``node`` returns (nested tuples alike), on dim 1."""
    shape = shape_of(node)
    return _fresh(b, f"<{node.name}>", shape if shape is not None else piece_shapes(node))


def _fresh(b: GroupBuilder, label: str, shapes: PieceShape) -> Traced:
    if isinstance(shapes, list):
        return tuple(_fresh(b, f"{label}[{i}]", s) for i, s in enumerate(shapes))
    return b.new_group(shapes[1], label, pinned=True) if shapes is not None and len(shapes) > 1 else None


def _visit_group_norm(b: GroupBuilder, name: str, module: nn.GroupNorm, layout: Layout, where: str) -> Layout:
    """A GroupNorm normalizes each of its ``num_groups`` runs of channels together: the channels
    shrink by the same count in every run (like a grouped conv's), so each stays in its own
    norm group. Its statistics change with the channels, as a LayerNorm's do. Fed by channels
    of several groups (a concatenation) or by a differently grouped conv, it keeps them."""
    layout.on_dim1(where)
    parts = b.leaves(layout).groups
    root = parts[0] if len(parts) == 1 else None
    if root is None or b.subgroups.get(root, module.num_groups) != module.num_groups:
        b.pin(layout)
        for param in ("weight", "bias") if module.affine else ():
            b.count_fixed(f"{name}.{param}")
        return layout
    b.subgroups[root] = module.num_groups
    b.slots.append((name, "norm", layout, 0))
    b.raw_terms.append((name, layout, None, 1, 0, 0, 2 if module.affine else 0))
    return layout


def layer_norm_layout(
    b: GroupBuilder,
    owner: str | None,
    params: list[str],
    layout: Layout,
    in_shape: tuple[int, ...],
    normalized_shape: Any,
    where: str,
) -> Layout:
    """A LayerNorm (the module, or ``F.layer_norm`` inside one such as torchvision's LayerNorm2d):
    ``owner`` names the nn.LayerNorm to resize (None: none can be), ``params`` its weight / bias.

    Over the channels alone (``normalized_shape == (C,)`` on a channels-last tensor) it is
    pruned with them: weight, bias and ``normalized_shape`` shrink. Pruning then changes the
    mean and variance it normalizes with, so the pruned model is not the dense one with
    channels zeroed (training goes on after pruning, as with any LayerNorm model). Over other
    axes only it is per-channel and left alone; over channels *and* other axes, or in a
    module pat_ray cannot resize, the channels are kept (pinned)."""
    normalized = tuple(normalized_shape) if isinstance(normalized_shape, list | tuple) else None
    if normalized is None:
        raise UnsupportedModelError(f"{where}: normalized_shape {normalized_shape!r} is not a constant")
    per_channel = normalized == (b.width(layout),) and layout.repeat == 1 and layout.axis == len(in_shape) - 1
    if per_channel and owner is not None:
        b.slots.append((owner, "norm", layout, 0))
        b.raw_terms.append((owner, layout, None, 1, 0, 0, len(params)))
        return layout
    for param in params:
        b.count_fixed(param)
    if layout.axis >= len(in_shape) - len(normalized):
        b.pin(layout)  # normalizes the channels together with other axes, or cannot be resized
    return layout


def _visit_linear(
    b: GroupBuilder, name: str, module: nn.Linear, layout: Layout, in_shape: tuple[int, ...], where: str
) -> Layout:
    """A Linear reads its input's last axis: (N, features), or a channels-last (N, ..., C)."""
    last = len(in_shape) - 1
    if layout.axis != last and layout.repeat == 1:
        if not b.is_pinned(layout):
            return _linear_across(b, name, module, layout, in_shape)
        layout = b.new_group(in_shape[-1], f"<{name} input>", pinned=True, axis=last)  # (N, T, D) from outside
    if layout.axis != last or (last > 1 and layout.repeat != 1):
        raise UnsupportedModelError(
            f"{where}: Linear on a tensor of shape {in_shape} whose channels are on dim {layout.axis}, "
            "not on the last one"
        )
    if b.width(layout) != module.in_features:
        raise UnsupportedModelError(f"{where}: input width does not match in_features")
    b.slots.append((name, "in", layout, 1))
    out = b.new_group(module.out_features, name, pinned=name in b.excluded, axis=last)
    b.slots.append((name, "out", out, 0))
    per_out = 1 if module.bias is not None else 0
    positions = math.prod(in_shape[1:-1])  # a channels-last Linear runs once per pixel
    b.raw_terms.append((name, out, layout, 1, positions, 1, per_out))
    return out


def _linear_across(b: GroupBuilder, name: str, module: nn.Linear, layout: Layout, in_shape: tuple[int, ...]) -> Layout:
    """A Linear over another axis than the channels' (over a 1-D signal's length): it runs once
    per channel, which it leaves where they are; its own weights never change size."""
    rows = math.prod(in_shape[1:-1]) // in_shape[layout.axis]  # the other axes it runs along
    b.raw_terms.append((name, layout, None, 1, module.in_features * module.out_features * rows, 0, 0))
    _count_weights_as_they_are(b, name)
    return layout


def _visit_conv(
    b: GroupBuilder, name: str, module: _ConvNd, layout: Layout, shape: tuple[int, ...], where: str
) -> Layout:
    if b.width(layout) != module.in_channels:
        raise UnsupportedModelError(f"{where}: input channels do not match in_channels")
    kernel = math.prod(module.kernel_size)
    spatial = math.prod(shape[2:])
    per_out = 1 if module.bias is not None else 0
    groups, cin, cout = module.groups, module.in_channels, module.out_channels
    if groups == 1:
        b.slots.append((name, "in", layout, 1))
        out = b.new_group(cout, name, pinned=name in b.excluded)
        b.slots.append((name, "out", out, 0))
        b.raw_terms.append((name, out, layout, 1, kernel * spatial, kernel, per_out))
        return out
    if groups == cin == cout:  # depthwise: channel i in -> channel i out
        if name in b.excluded:
            b.pin(layout)
        b.slots.append((name, "depthwise", layout, 0))
        b.raw_terms.append((name, layout, None, 1, kernel * spatial, kernel, per_out))
        return layout
    parts = b.leaves(layout).groups
    if cin == cout and len(parts) == 1:  # grouped, e.g. ResNeXt / RegNet
        root = parts[0]
        if b.subgroups.get(root, groups) != groups:
            raise UnsupportedModelError(f"{where}: channels feed convs of different groups")
        b.subgroups[root] = groups
        if name in b.excluded:
            b.pin(layout)
        b.slots.append((name, "grouped", layout, 0))
        b.raw_terms.append((name, layout, layout, groups, kernel * spatial, kernel, per_out))
        return layout
    # grouped, in != out (ShuffleNet V1's 1x1s): the input stays whole, the outputs shrink by the
    # same count in every conv group (each output channel reads only its own group's inputs)
    b.pin(layout)
    out = b.new_group(cout, name, pinned=name in b.excluded)
    b.subgroups[out.groups[0]] = groups
    b.slots.append((name, "out", out, 0))
    b.raw_terms.append((name, out, layout, groups, kernel * spatial, kernel, per_out))
    return out


def _visit_transposed(
    b: GroupBuilder, name: str, module: _ConvNd, layout: Layout, in_shape: tuple[int, ...], where: str
) -> Layout:
    """A transposed conv: its weight holds input channels on dim 0 and output channels on dim 1,
    and each input pixel costs ``in * out * kernel`` MACs."""
    if b.width(layout) != module.in_channels:
        raise UnsupportedModelError(f"{where}: input channels do not match in_channels")
    if module.groups != 1:
        raise UnsupportedModelError(f"{where}: a grouped transposed conv (groups={module.groups}) is not supported")
    kernel = math.prod(module.kernel_size)
    b.slots.append((name, "in", layout, 0))
    out = b.new_group(module.out_channels, name, pinned=name in b.excluded)
    b.slots.append((name, "out", out, 1))
    per_out = 1 if module.bias is not None else 0
    b.raw_terms.append((name, out, layout, 1, kernel * math.prod(in_shape[2:]), kernel, per_out))
    return out
