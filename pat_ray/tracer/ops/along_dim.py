"""Ops that work along one named dim and leave the others alone: differences (``diff``),
narrowing (``narrow``), picking positions (``index_select``, ``gather``) or ranking them
(``argsort``), rotating a plane (``rot90``) and moving a dim (``movedim``).

Along any other dim than the channels' they let the channels through. Along the channels,
``narrow`` is a slice by numbers in the code (followed as ``x[:, a:b]``); the others make each
result channel from channels the code picks by position (a difference of neighbours, listed
indices, a rotation), which would change as channels go: the input is kept whole and the
result's channels are new fixed ones.
"""

from __future__ import annotations

import torch

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layout import Layout, Traced
from pat_ray.tracer.nodes import arg, int_arg, known_shape, target_name
from pat_ray.tracer.ops.call import OpCall
from pat_ray.tracer.ops.registry import op_rule
from pat_ray.tracer.ops.shape import channel_slice, keep_channels_there
from pat_ray.tracer.state import GroupBuilder

# name -> where ``dim`` sits among the positional arguments, and its default
_ALONG: dict[str, tuple[int, int | None]] = {
    "diff": (2, -1),
    "index_select": (1, None),
    "gather": (1, None),
    "argsort": (1, -1),
}


@op_rule("along_dim", functions={getattr(torch, name) for name in _ALONG}, methods=set(_ALONG))
def along_dim_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    """``diff`` / ``index_select`` / ``gather`` / ``argsort`` along ``dim``."""
    node, layout, where = call.node, call.first_layout(), call.where
    position, default = _ALONG[target_name(node)]
    axis = int_arg(arg(node, position, "dim", default), where) % len(known_shape(node.args[0], where))
    if axis == layout.axis or layout.repeat != 1:
        return keep_channels_there(builder, node, layout, layout.axis, where)
    others = [call.layouts.get(a) for a in node.all_input_nodes[1:]]  # gather's index, diff's prepend / append
    if target_name(node) == "gather":
        return _gathered(builder, layout, others[0] if others else None, where)
    if target_name(node) == "diff":
        return _with_ends(builder, layout, others, where)
    return layout  # positions along another dim (index_select, argsort): every channel keeps its own


def _gathered(builder: GroupBuilder, layout: Layout, index: Traced, where: str) -> Layout:
    """``gather`` along another dim: its index is as wide over the channels as its result. An
    index made from the input (``x.argsort(dim)``) prunes with it; one the code made keeps them."""
    if isinstance(index, Layout) and (index.axis, index.repeat) == (layout.axis, 1) and not builder.is_pinned(index):
        return builder.unify(layout, index, where)
    builder.pin(layout)
    return layout


def _with_ends(builder: GroupBuilder, layout: Layout, ends: list[Traced], where: str) -> Layout:
    """``diff``'s ``prepend`` / ``append`` are concatenated along its dim, so they are sliced with
    the input's channels; a constant among them keeps the input's channels whole."""
    traced = [end for end in ends if isinstance(end, Layout)]
    if len(traced) < len(ends):
        builder.pin(layout)
    for end in traced:
        builder.unify(layout, end, where)
    return layout


@op_rule("narrow", functions={torch.narrow}, methods={"narrow"})
def narrow_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    """``x.narrow(dim, start, length)``: ``x[..., start:start + length]`` along ``dim``."""
    node, layout, where = call.node, call.first_layout(), call.where
    axis = int_arg(arg(node, 1, "dim"), where) % len(known_shape(node.args[0], where))
    if axis != layout.axis:
        return layout
    start, length = arg(node, 2, "start"), arg(node, 3, "length")
    if not isinstance(start, int) or not isinstance(length, int):
        raise UnsupportedModelError(f"{where} narrows the channel dimension by sizes known only at run time")
    return channel_slice(builder, layout, slice(start, start + length), where)


@op_rule("rotate", functions={torch.rot90}, methods={"rot90"})
def rot90_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    """``rot90(x, k, dims)`` turns the plane of ``dims``: the channels pass unless on it."""
    node, layout, where = call.node, call.first_layout(), call.where
    ndim = len(known_shape(node.args[0], where))
    dims = arg(node, 2, "dims", (0, 1))
    if {int_arg(d, where) % ndim for d in dims} & {layout.axis} or layout.repeat != 1:
        return keep_channels_there(builder, node, layout, layout.axis, where)
    return layout


@op_rule("movedim", functions={torch.movedim, torch.moveaxis}, methods={"movedim", "moveaxis"})
def movedim_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    """``movedim(source, destination)``: the channels go where their dim is moved, read from a
    size-only tensor moved the same way (its dim ``i`` is ``i + 1`` long)."""
    node, layout, where = call.node, call.first_layout(), call.where
    ndim = len(known_shape(node.args[0], where))
    source, destination = arg(node, 1, "source"), arg(node, 2, "destination")
    marker = torch.zeros(()).expand(*range(1, ndim + 1))
    try:
        moved = marker.movedim(source, destination).shape
    except (TypeError, RuntimeError) as err:
        raise UnsupportedModelError(f"{where}: moves dims pat_ray cannot read ({err})") from None
    axis = list(moved).index(layout.axis + 1)
    if axis == 0 or (layout.repeat != 1 and axis != layout.axis):
        raise UnsupportedModelError(f"{where}: moves the channels to dim {axis}")
    return Layout(layout.groups, layout.repeat, axis)
