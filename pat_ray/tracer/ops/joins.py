"""Ops that join tensors or make new ones: ``cat`` (channels of the pieces side by side, or
coupled when joined along another axis), ``stack``, ``F.pad`` on the channel axis (zero
channels around them), ``repeat`` / ``tile`` (copies side by side), and tensors made from a size
(``torch.zeros(n, 8, h, w)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layout import Layout, Traced
from pat_ray.tracer.nodes import arg, int_arg, known_shape, parameter_dim, size_arguments
from pat_ray.tracer.ops.call import OpCall
from pat_ray.tracer.ops.registry import op_rule
from pat_ray.tracer.state import GroupBuilder

# Aliases of ``torch.cat``.
CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}

# Ops that tile a tensor (``x.repeat(1, 2, 1, 1)``): the channels repeat like a ``cat`` of copies.
REPEAT_FUNCTIONS = {torch.tile}
REPEAT_METHODS = {"repeat", "tile"}

# Ops that make a new tensor of a given size (``torch.zeros(n, 8, h, w)``, ``x.new_zeros(...)``).
CREATION_FUNCTIONS = {torch.zeros, torch.ones, torch.full, torch.empty, torch.rand, torch.randn}
CREATION_METHODS = {"new_zeros", "new_ones", "new_full", "new_empty"}

PAD_FUNCTIONS = {F.pad}
STACK_FUNCTIONS = {torch.stack}


def _listed_layouts(tensors: Any, layouts: Mapping[fx.Node, Traced]) -> list[Traced]:
    """The layouts of a cat's / stack's tensors: a list of nodes, or the tuple a split returned."""
    if isinstance(tensors, fx.Node):
        traced = layouts.get(tensors)
        return list(traced) if isinstance(traced, tuple) else [traced]
    listed = tensors if isinstance(tensors, list | tuple) else ()
    return [layouts.get(t) if isinstance(t, fx.Node) else None for t in listed]


def cat_layout(builder: GroupBuilder, node: fx.Node, layouts: Mapping[fx.Node, Traced], where: str) -> Layout:
    """Along the channel axis the pieces' channels sit side by side; along another axis (tokens
    after a class token) every piece holds the same channels: traced pieces are coupled, and a
    piece read from a parameter (the class token, expanded over the batch) is sliced with them."""
    dim = int_arg(arg(node, 1, "dim", 0), where)
    found = _listed_layouts(node.args[0], layouts)
    parts = [p for p in found if isinstance(p, Layout)]
    ndim = len(known_shape(node, where))
    if parts and len(parts) == len(found) and any(dim % ndim == p.axis for p in parts):
        if any(p.repeat != 1 or p.axis != parts[0].axis for p in parts):
            raise UnsupportedModelError(f"{where}: concatenates flattened features or differently laid out channels")
        return Layout(tuple(g for p in parts for g in p.groups), 1, parts[0].axis)
    if not parts or any(dim % ndim == p.axis for p in parts):
        raise UnsupportedModelError(f"{where}: concatenates a tensor of unknown channels")
    joined = builder.unify_all(parts, where)
    listed = node.args[0] if isinstance(node.args[0], list | tuple) else [None] * len(found)
    for piece, traced in zip(listed, found):
        source = parameter_dim(builder.model, piece, joined.axis) if isinstance(piece, fx.Node) else None
        if traced is None and source is None:
            raise UnsupportedModelError(f"{where}: concatenates a tensor of unknown channels")
        if traced is None and source is not None:
            builder.slice_param(source[0], source[1], joined, where)
    return joined


def stack_layout(builder: GroupBuilder, node: fx.Node, layouts: Mapping[fx.Node, Traced], where: str) -> Layout:
    """``torch.stack``: its tensors are coupled (like an element-wise op's operands, the safe
    reading for whatever combines them later), their channels one axis further right when
    the new axis comes before them."""
    parts = _listed_layouts(node.args[0], layouts)
    if not parts or not all(isinstance(p, Layout) and p.repeat == 1 for p in parts):
        raise UnsupportedModelError(f"{where}: stacks a tensor of unknown channels or flattened features")
    result = builder.unify_all((p for p in parts if isinstance(p, Layout)), where)
    dim = int_arg(arg(node, 1, "dim", 0), where)
    new_axis = dim % len(known_shape(node, where))
    if new_axis == 0:
        raise UnsupportedModelError(f"{where}: stacks on dim 0, in front of the batch dimension")
    return Layout(result.groups, 1, result.axis + (new_axis <= result.axis))


def repeat_layout(node: fx.Node, layout: Layout, where: str) -> Layout:
    """``x.repeat(1, r, 1, 1)`` / ``tile``: the channels ``r`` times over, like a ``cat`` of copies;
    a count on another axis is free to be read at run time (``pos.repeat(B, 1, 1, 1)``)."""
    given = size_arguments(node, 1, "dims", "repeats")
    factors: list[Any] = [given] if isinstance(given, fx.Node) else list(given)
    ndim = len(known_shape(node.args[0], where))
    factors = [1] * (ndim - len(factors)) + factors  # tile pads on the left
    if len(factors) != ndim:
        raise UnsupportedModelError(f"{where}: repeats by {factors}: adds leading axes")
    factor = factors[layout.axis]  # other axes' counts may be read at run time (XCiT's batch size)
    if not isinstance(factor, int):
        raise UnsupportedModelError(f"{where}: repeats the channels a number of times known only at run time")
    if factor != 1 and layout.repeat != 1:
        raise UnsupportedModelError(f"{where}: tiles flattened features")
    return Layout(layout.groups * factor, layout.repeat, layout.axis)


def created_layout(builder: GroupBuilder, node: fx.Node, shape: tuple[int, ...]) -> Layout | None:
    """A tensor made from a size (``torch.zeros(n, 8, h, w)``, ``x.new_zeros(...)``): with its
    channel count written in the code it is fixed channels (a ``cat`` of it keeps them); with
    a count read at run time nothing is known of them (None: whatever uses them is refused)."""
    written = size_arguments(node, 1 if node.op == "call_method" else 0, "size")  # new_zeros' tensor first
    if isinstance(written, fx.Node) or len(written) <= 1 or not isinstance(written[1], int):
        return None
    return builder.fixed_channels(f"<{node.name}>", shape)


def pad_layout(builder: GroupBuilder, node: fx.Node, layout: Layout, where: str) -> Layout:
    """``F.pad``: padding the channel axis with a constant (ResNet's parameter-free "option A"
    shortcut) adds channels that are always zero: pinned groups around the input's."""
    if known_shape(node, where)[layout.axis] == known_shape(node.args[0], where)[layout.axis]:
        return layout  # only other axes padded (a window padded to a multiple of its size)
    pad, mode = arg(node, 1, "pad", ()), arg(node, 2, "mode", "constant")
    pairs = [int_arg(p, where) for p in pad] if isinstance(pad, list | tuple) else []
    last = len(known_shape(node.args[0], where)) - 1 - layout.axis  # pad's pairs start at the last axis
    before, after = pairs[2 * last : 2 * last + 2] if len(pairs) >= 2 * last + 2 else (0, 0)
    if not (before or after):
        return layout
    if mode != "constant" or layout.repeat != 1 or before < 0 or after < 0:
        raise UnsupportedModelError(f"{where}: pads (or crops) the channels with mode {mode!r}")

    def zeros(n: int, side: str) -> list[int]:
        return list(builder.fixed_group(n, f"<{node.name} {side}>").groups) if n else []

    groups = zeros(before, "before") + list(layout.groups) + zeros(after, "after")
    return Layout(tuple(groups), 1, layout.axis)


@op_rule("cat", functions=CAT_FUNCTIONS)
@op_rule("cat_pieces", functions=CAT_FUNCTIONS, form="tuple")  # cat(x.split(...))
def cat_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    return cat_layout(builder, call.node, call.layouts, call.where)


@op_rule("stack", functions=STACK_FUNCTIONS)
@op_rule("stack_pieces", functions=STACK_FUNCTIONS, form="tuple")
def stack_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    return stack_layout(builder, call.node, call.layouts, call.where)


@op_rule("repeat", functions=REPEAT_FUNCTIONS, methods=REPEAT_METHODS)
def repeat_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    return repeat_layout(call.node, call.first_layout(), call.where)


@op_rule("pad", functions=PAD_FUNCTIONS)
def pad_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    return pad_layout(builder, call.node, call.first_layout(), call.where)


@op_rule("create", functions=CREATION_FUNCTIONS, methods=CREATION_METHODS, needs_input=False)
def created_rule(builder: GroupBuilder, call: OpCall) -> Layout | None:
    return created_layout(builder, call.node, call.shape)
