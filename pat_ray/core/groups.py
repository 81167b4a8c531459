"""Find the coupled output channels of a CNN by tracing it with torch.fx.

Removing output channel ``i`` of a conv is only legal if every tensor that carries that
channel loses it together: the BatchNorm after it, every consumer's input slice, every
other operand of a residual sum, a depthwise conv that follows it, an SE gate that scales
it. We find these sets by propagating a *layout* through the traced graph: for every
tensor, the ordered list of channel groups its dim 1 is made of. Elementwise ops between
tensors merge their groups (union-find), ``cat`` concatenates layouts, ``flatten`` turns
each channel into ``H*W`` features. Any op we do not understand stops the trace with an
error that names it: a silently wrong prune is worse than no prune.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.conv import _ConvNd

from pat_ray.core.custom_layers import rule_for, trace_custom
from pat_ray.core.graph import (
    CONV_TYPES,
    INPUT_GROUP_PREFIX,
    NORM_TYPES,
    TRANSPOSED_CONV_TYPES,
    ChannelGroup,
    ComputeTerm,
    Example,
    Member,
    ModelGraph,
    UnsupportedModelError,
    first_sample,
)
from pat_ray.core.layout import GroupBuilder, Layout, Pieces, Traced
from pat_ray.core.tensor_ops import (
    binary_layout,
    cat_layout,
    getitem_layout,
    known_shape,
    reduce_layout,
    reshape_layout,
    shape_of,
)
from pat_ray.core.tracing_ops import (
    BINARY_FUNCTIONS,
    BINARY_METHODS,
    CAT_FUNCTIONS,
    CHANNEL_PINNING_MODULES,
    MULTI_OUTPUT_FUNCTIONS,
    MULTI_OUTPUT_METHODS,
    PASSTHROUGH_FUNCTIONS,
    PASSTHROUGH_METHODS,
    PASSTHROUGH_MODULES,
    REDUCTION_FUNCTIONS,
    REDUCTION_METHODS,
    RESHAPE_FUNCTIONS,
    RESHAPE_METHODS,
)
from pat_ray.core.tuples import pick, piece_shapes, split_layout


def trace_channel_groups(
    model: nn.Module,
    example_input: Example,
    exclude: Iterable[str] = (),
) -> ModelGraph:
    """Trace ``model`` and return its channel groups and cost terms.

    ``example_input``: one tensor, or a tuple with one tensor per argument of ``forward``.
    ``exclude`` names modules whose output channels must be kept (their groups are pinned).
    The model is traced in eval mode (stochastic depth and dropout become identities) and
    restored to its previous mode afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        graph_module = fx.GraphModule(model, _Tracer().trace(model))
        with torch.no_grad():
            ShapeProp(graph_module).propagate(*first_sample(example_input))
    except UnsupportedModelError:
        raise
    except Exception as err:  # fx raises many types; name the model and the cause
        raise UnsupportedModelError(f"torch.fx could not trace {type(model).__name__}: {err}") from err
    finally:
        model.train(was_training)
    builder = GroupBuilder(model=model, excluded=frozenset(exclude))
    unknown = builder.excluded - {name for name, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"exclude names modules that do not exist: {sorted(unknown)}")
    layouts: dict[fx.Node, Traced] = {}
    for node in graph_module.graph.nodes:
        layouts[node] = _visit(builder, graph_module, node, layouts)
    return _finalize(builder, tuple(first_sample(example_input)[0].shape))


def _tensor_layouts(args: Any, layouts: dict[fx.Node, Traced]) -> list[Layout]:
    """The layouts of the tensors in ``args``, each piece of a tuple result included."""
    found: list[Layout] = []

    def add(n: fx.Node) -> None:
        traced = layouts.get(n)
        pieces = traced if isinstance(traced, tuple) else (traced,)
        found.extend(p for p in pieces if p is not None)

    fx.node.map_arg(args, add)
    return found


def _where(node: fx.Node) -> str:
    return f"node {node.name!r} ({node.op} {getattr(node.target, '__name__', node.target)})"


def _visit(b: GroupBuilder, gm: fx.GraphModule, node: fx.Node, layouts: dict[fx.Node, Traced]) -> Traced:
    shape = shape_of(node)
    if node.op == "placeholder":
        if shape is None or len(shape) < 2:
            return None
        return b.new_group(shape[1], f"{INPUT_GROUP_PREFIX}{node.name}>", pinned=True)
    if node.op == "output":
        for layout in _tensor_layouts(node.args, layouts):
            b.pin(layout)
        return None
    if node.op == "get_attr":
        return None
    where = _where(node)
    tuples = [n for n in node.all_input_nodes if isinstance(layouts.get(n), tuple)]
    if tuples:
        return _use_pieces(b, node, tuples[0], layouts, where)
    inputs = _tensor_layouts((node.args, node.kwargs), layouts)
    if not inputs:
        if node.op == "call_module" and any(True for _ in gm.get_submodule(str(node.target)).parameters()):
            raise UnsupportedModelError(
                f"{where}: its input is a tensor whose channels pat_ray could not follow from the model's input"
            )
        return None  # no channel-carrying tensor flows in (shape arithmetic, constants)
    pieces = piece_shapes(node.meta.get("tensor_meta"))
    if pieces is not None:
        return _visit_multi_output(b, node, inputs[0], pieces, where)
    if node.op == "call_module":
        result = _visit_module(b, gm, node, inputs, shape)
    else:
        result = _visit_function(b, node, inputs, shape, layouts)
    if isinstance(result, Layout) and shape is not None and len(shape) >= 2 and b.width(result) != shape[1]:
        raise UnsupportedModelError(  # a table entry whose channel semantics do not hold here
            f"{where}: its result has {shape[1]} channels, but the channels traced into it add up to "
            f"{b.width(result)}; pat_ray does not know how this op maps channels"
        )
    return result


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with the modules a plugin declared kept whole (a leaf) like nn.Conv2d."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return rule_for(m) is not None or super().is_leaf_module(m, module_qualified_name)


def _visit_multi_output(
    b: GroupBuilder, node: fx.Node, layout: Layout, pieces: list[tuple[int, ...] | None], where: str
) -> Pieces:
    table: dict[Any, int] = MULTI_OUTPUT_METHODS if node.op == "call_method" else MULTI_OUTPUT_FUNCTIONS
    dim_position = table.get(node.target) if node.op in ("call_method", "call_function") else None
    first = node.args[0] if node.args else None
    in_shape = shape_of(first)
    if dim_position is None or in_shape is None:
        raise UnsupportedModelError(
            f"{where}: returns several tensors and pat_ray does not know how their channels relate to "
            "its input's; supported: split, chunk, unbind, tensor_split"
        )
    return split_layout(b, node, layout, dim_position, in_shape, pieces, where)


def _use_pieces(b: GroupBuilder, node: fx.Node, source: fx.Node, layouts: dict[fx.Node, Traced], where: str) -> Traced:
    """A node that consumes a whole tuple of tensors: indexing it, or concatenating it."""
    pieces = layouts[source]
    assert isinstance(pieces, tuple), "only a multi-output node's layouts are pieces"
    if node.op == "call_function" and node.target is operator.getitem and node.args[0] is source:
        return pick(node, pieces, where)
    if node.op == "call_function" and node.target in CAT_FUNCTIONS and node.args[0] is source:
        return cat_layout(b, node, layouts, where)
    raise UnsupportedModelError(
        f"{where}: takes the tuple of tensors {source.name!r} returns; "
        "pat_ray follows such tuples only through indexing and cat"
    )


def _visit_module(
    b: GroupBuilder, gm: fx.GraphModule, node: fx.Node, inputs: list[Layout], shape: tuple[int, ...] | None
) -> Layout | None:
    name = str(node.target)
    module = gm.get_submodule(name)
    where = f"module {name!r} ({type(module).__name__})"
    layout = inputs[0]
    if (rule := rule_for(module)) is not None:  # declared by a plugin: before the built-in kinds
        shapes = (known_shape(node.args[0], where), known_shape(node, where))
        return trace_custom(b, name, module, rule, layout, shapes, where)
    if isinstance(module, CONV_TYPES):
        return _visit_conv(b, name, module, layout, shape, where)
    if isinstance(module, TRANSPOSED_CONV_TYPES):
        return _visit_transposed(b, name, module, layout, known_shape(node.args[0], where), where)
    if isinstance(module, nn.Linear):
        in_shape = shape_of(node.args[0])
        if in_shape is None or len(in_shape) != 2:
            raise UnsupportedModelError(f"{where}: Linear on a tensor of shape {in_shape}")
        if b.width(layout) != module.in_features:
            raise UnsupportedModelError(f"{where}: input width does not match in_features")
        b.slots.append((name, "in", layout, 1))
        out = b.new_group(module.out_features, name, pinned=name in b.excluded)
        b.slots.append((name, "out", out, 0))
        per_out = 1 if module.bias is not None else 0
        b.raw_terms.append((name, out, layout, 1, 1, 1, per_out))
        return out
    if isinstance(module, NORM_TYPES):
        if layout.repeat != 1:
            raise UnsupportedModelError(f"{where}: BatchNorm over flattened features")
        b.slots.append((name, "norm", layout, 0))
        per_out = 2 if module.affine else 0
        b.raw_terms.append((name, layout, None, 1, 0, 0, per_out))
        return layout
    if isinstance(module, PASSTHROUGH_MODULES):
        if isinstance(module, nn.Flatten):
            return reshape_layout(b, node, layout, where)
        return layout
    if isinstance(module, CHANNEL_PINNING_MODULES):
        b.pin(layout)
        return layout
    raise UnsupportedModelError(
        f"{where}: pat_ray does not know how this module treats channels; supported: Conv, "
        "ConvTranspose, Linear, BatchNorm, activations, pooling, dropout, and modules a plugin "
        "declares with pat_ray_register_layers"
    )


def _visit_conv(
    b: GroupBuilder, name: str, module: _ConvNd, layout: Layout, shape: tuple[int, ...] | None, where: str
) -> Layout:
    if layout.repeat != 1 or b.width(layout) != module.in_channels:
        raise UnsupportedModelError(f"{where}: input channels do not match in_channels")
    if shape is None:
        raise UnsupportedModelError(f"{where}: the shape of its output is unknown")
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
    if cin == cout and len(layout.groups) == 1:  # grouped, e.g. ResNeXt / RegNet
        root = b.find(layout.groups[0])
        if b.subgroups.get(root, groups) != groups:
            raise UnsupportedModelError(f"{where}: channels feed convs of different groups")
        b.subgroups[root] = groups
        if name in b.excluded:
            b.pin(layout)
        b.slots.append((name, "grouped", layout, 0))
        b.raw_terms.append((name, layout, layout, groups, kernel * spatial, kernel, per_out))
        return layout
    raise UnsupportedModelError(
        f"{where}: grouped conv with groups={groups}, in={cin}, out={cout} is not supported "
        "(supported: groups=1, depthwise, or in == out channels fed by one group)"
    )


def _visit_transposed(
    b: GroupBuilder, name: str, module: _ConvNd, layout: Layout, in_shape: tuple[int, ...], where: str
) -> Layout:
    """A transposed conv: its weight holds input channels on dim 0 and output channels on dim 1,
    and each input pixel costs ``in * out * kernel`` MACs."""
    if layout.repeat != 1 or b.width(layout) != module.in_channels:
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


def _visit_function(
    b: GroupBuilder,
    node: fx.Node,
    inputs: list[Layout],
    shape: tuple[int, ...] | None,
    layouts: dict[fx.Node, Traced],
) -> Layout | None:
    target = node.target
    where = _where(node)
    if shape is None:
        return None  # a non-tensor result (size, shape, a python number)
    traced = layouts.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
    first = traced if isinstance(traced, Layout) else None  # a tuple's pieces are used in _use_pieces
    if node.op == "call_method":
        kind = (
            "pass"
            if target in PASSTHROUGH_METHODS
            else "binary"
            if target in BINARY_METHODS
            else "reshape"
            if target in RESHAPE_METHODS
            else "reduce"
            if target in REDUCTION_METHODS
            else None
        )
    else:
        kind = (
            "pass"
            if target in PASSTHROUGH_FUNCTIONS
            else "binary"
            if target in BINARY_FUNCTIONS
            else "reshape"
            if target in RESHAPE_FUNCTIONS
            else "reduce"
            if target in REDUCTION_FUNCTIONS
            else "cat"
            if target in CAT_FUNCTIONS
            else "getitem"
            if target is operator.getitem
            else "softmax"
            if target in (F.softmax, F.log_softmax, torch.softmax)
            else None
        )
    if kind == "pass" and first is not None:
        return first
    if kind == "binary":
        return binary_layout(b, node, shape, layouts, where)
    if kind == "reshape" and first is not None:
        return reshape_layout(b, node, first, where)
    if kind == "reduce" and first is not None:
        return reduce_layout(node, first, shape, where)
    if kind == "cat":
        return cat_layout(b, node, layouts, where)
    if kind == "softmax":
        b.pin(inputs[0])
        return inputs[0]
    if kind == "getitem" and first is not None:
        return getitem_layout(node, first, where)
    if kind == "getitem":
        return None  # indexing a python container of tensors is handled via cat/args
    raise UnsupportedModelError(f"{where}: pat_ray does not know how this op treats channels")


def _finalize(b: GroupBuilder, input_shape: tuple[int, ...]) -> ModelGraph:
    members: dict[int, list[Member]] = {}
    slots = list(b.slots)
    slots += [(target, "param", layout, axis) for target, (axis, layout) in b.params.items()]
    for module, role, layout, axis in slots:
        offset = 0
        for gid in layout.groups:
            root = b.find(gid)
            members.setdefault(root, []).append(Member(module, role, offset, layout.repeat, axis))
            offset += b.sizes[root] * layout.repeat
    roots = sorted({b.find(g) for g in range(len(b.parent))})
    names = {r: b.labels[r] for r in roots}
    groups = []
    for root in roots:
        sub = b.subgroups.get(root, 1)
        if b.sizes[root] % sub:
            raise UnsupportedModelError(f"group {names[root]!r}: size not divisible by groups")
        groups.append(
            ChannelGroup(
                name=names[root],
                size=b.sizes[root],
                members=tuple(members.get(root, ())),
                pinned=root in b.pinned or not members.get(root),
                subgroups=sub,
            )
        )
    terms = tuple(
        ComputeTerm(
            module=module,
            out_groups=tuple(names[b.find(g)] for g in out.groups),
            in_groups=tuple(names[b.find(g)] for g in inp.groups) if inp else (),
            in_repeat=inp.repeat if inp else 1,
            in_divisor=divisor,
            macs_per_pair=macs,
            params_per_pair=params,
            params_per_out=per_out,
        )
        for module, out, inp, divisor, macs, params, per_out in b.raw_terms
    )
    return ModelGraph(groups=tuple(groups), terms=terms, input_shape=input_shape)
