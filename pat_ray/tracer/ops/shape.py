"""Ops that change a tensor's shape or move its axes: ``view`` / ``reshape`` / ``flatten``,
``unsqueeze`` / ``squeeze``, ``permute`` / ``transpose``, indexing (``x[:, :, 0]``), and the ops
that move channels among positions (a channel shuffle's ``view``, ``flip`` / ``roll`` along the
channels), whose input is then kept whole.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layout import Layout, Traced
from pat_ray.tracer.nodes import (
    arg,
    int_arg,
    known_shape,
    size_arguments,
    size_derived_from,
    size_read_from,
    size_written_in_code,
    target_name,
)
from pat_ray.tracer.ops.call import OpCall
from pat_ray.tracer.ops.heads import cut_heads, head_groups, merged_layout, written_by_attribute
from pat_ray.tracer.ops.registry import op_rule
from pat_ray.tracer.state import GroupBuilder

# Ops that change the shape; allowed only as a flatten of (N, C, ...) into (N, C*...).
RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.unflatten}
RESHAPE_METHODS = {"flatten", "view", "reshape", "unflatten"}

# Ops that reorder a tensor's axes: the channels move with theirs (to the last one, channels-last).
PERMUTE_FUNCTIONS = {torch.permute, torch.transpose, torch.swapaxes, torch.swapdims}
PERMUTE_METHODS = {"permute", "transpose", "swapaxes", "swapdims"}

# Ops that add or remove size-1 axes (``unsqueeze``, ``squeeze``) or stack tensors on a new one.
AXIS_FUNCTIONS = {torch.unsqueeze, torch.squeeze}
AXIS_METHODS = {"unsqueeze", "squeeze", "unsqueeze_", "squeeze_"}

# Ops that move values along the listed dims (``flip``, ``roll``): channels stay unless those include theirs.
SHIFT_FUNCTIONS = {torch.flip, torch.roll}
SHIFT_METHODS = {"flip", "roll"}

# Ops that move channels to other positions: their input is kept whole (``reordered_layout``).
REORDERING_FUNCTIONS = {torch.channel_shuffle, torch.native_channel_shuffle, torch.pixel_shuffle, torch.pixel_unshuffle}


def reshape_layout(
    builder: GroupBuilder, node: fx.Node, layout: Layout, where: str, layouts: Mapping[fx.Node, Traced] | None = None
) -> Layout:
    """A reshape that keeps the channel axis whole (or flattens (N, C, ...) to (N, C*...)) is
    followed exactly. Any other (a channel shuffle's view to (N, groups, C/groups, ...),
    space-to-depth) moves channels among other axes: its input is kept whole (pinned) and its
    result's dim 1 is a new pinned group, so nothing downstream depends on their order."""
    result = _reshaped(builder, node, layout, where)
    if size_written_in_code(builder.model, node, result.axis) and not written_by_attribute(builder, node, result):
        builder.pin(layout)  # ``x.view(-1, 16 * 5 * 5)``: the code, not the tensor, says how many channels
    sizes_read_from_channels(builder, node, result, layouts or {}, where)
    return result


def sizes_read_from_channels(
    builder: GroupBuilder, node: fx.Node, result: Layout, layouts: Mapping[fx.Node, Traced], where: str
) -> None:
    """A size read at run time from another tensor's channels (``B, N, C = x.shape`` at the top
    of an attention block, then ``out.reshape(B, N, C)``) makes that dim exactly as wide as those
    channels after pruning too: on the result's channel axis the two are coupled; on another
    axis the source's channels must keep their width. A size read from a dim whose width
    pruning never changes (tokens, space, channels the trace does not follow there) and
    written on the result's channel axis fixes those channels, as a number in the code would."""
    if target_name(node) not in ("view", "reshape", "expand"):
        return
    given = size_arguments(node, 1, "shape", "size")
    for dim, entry in enumerate(given if isinstance(given, list | tuple) else ()):
        exact = size_read_from(entry) is not None  # else computed from it (``C // heads``): only pinned
        read = size_derived_from(entry)
        if read is None or read[0] is node.args[0]:
            continue
        source = layouts.get(read[0])
        if not isinstance(source, Layout) or read[1] % len(known_shape(read[0], where)) != source.axis:
            if dim == result.axis:  # DaViT's ``C // self.num_heads`` of windows whose channels are not followed
                builder.pin(result)
            continue  # a batch, token or spatial size
        if exact and dim == result.axis and result.repeat == 1 and source.repeat == 1:
            builder.unify(Layout(result.groups), Layout(source.groups), where)  # on different axes: as on dim 1
        else:
            builder.pin(source)
            if dim == result.axis:  # heads merged to the width of another tensor's channels: both stay
                builder.pin(result)


def _reshaped(builder: GroupBuilder, node: fx.Node, layout: Layout, where: str) -> Layout:
    in_shape, out_shape = known_shape(node.args[0], where), known_shape(node, where)
    if in_shape == out_shape:
        return layout
    if layout.axis == 1 and len(out_shape) == 2 and out_shape[0] == in_shape[0]:
        return Layout(layout.groups, layout.repeat * math.prod(in_shape[2:]))  # flatten
    before = math.prod(in_shape[: layout.axis])
    kept_axis = [
        j
        for j in range(1, len(out_shape))
        if math.prod(out_shape[:j]) == before and out_shape[j] == in_shape[layout.axis]
    ]
    if layout.repeat == 1 and kept_axis and out_shape[0] == in_shape[0]:
        return Layout(layout.groups, 1, kept_axis[0])
    if out_shape[0] == in_shape[0]:
        shapes = (in_shape, out_shape)
        regrouped = merged_layout(builder, node, layout, *shapes) or cut_heads(builder, node, layout, shapes)
        if regrouped is None and not builder.is_pinned(layout) and not _holds_heads(builder, layout):
            regrouped = channel_major(layout, in_shape, out_shape)
        if regrouped is not None:
            return regrouped
    return reordered_layout(builder, node, layout, where)


def _holds_heads(builder: GroupBuilder, layout: Layout) -> bool:
    """Whether ``layout`` holds attention heads or channels cut into them: their reshapes are
    the heads rules' to follow (``heads.py``); one those leave alone keeps them whole."""
    heads = head_groups(builder) | {builder.find(g) for g in builder.heads}
    return any(builder.find(g) in heads for g in builder.leaves(layout).groups)


def channel_major(layout: Layout, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Layout | None:
    """A reshape that keeps each channel's values together: in row-major order channel ``c``
    of ``layout`` fills one run of the positions after the dims before its axis (``repeat`` times
    the size of the dims after it); when the result's dim ``j`` cuts those positions into whole
    runs, channel ``c`` fills consecutive positions of dim ``j``. So merging the channels with the
    dims after them (``(N, C, k, L) -> (N, C * k, L)``, im2col's columns) and splitting them back
    (``(N, C * k, L) -> (N, C, k, L)``) are followed, not kept whole."""
    axis = layout.axis
    before, channels = math.prod(in_shape[:axis]), in_shape[axis] // layout.repeat
    run = layout.repeat * math.prod(in_shape[axis + 1 :])
    for j in range(1, len(out_shape)):
        after = math.prod(out_shape[j + 1 :])
        if math.prod(out_shape[:j]) == before and run % after == 0 and out_shape[j] == channels * (run // after):
            return Layout(layout.groups, run // after, j)
    return None


def reordered_layout(builder: GroupBuilder, node: fx.Node, layout: Layout, where: str) -> Layout:
    """An op that moves channels to other positions or axes (a channel shuffle, pixel shuffle,
    a reshape that splits the channel axis): pruning its input would change which channel
    lands where, so the input is kept whole and the result's dim 1 is a new pinned group."""
    return keep_channels_there(builder, node, layout, 1, where)


def keep_channels_there(builder: GroupBuilder, node: fx.Node, layout: Layout, axis: int, where: str) -> Layout:
    """The input's channels stay whole; the result's ``axis`` holds new fixed channels, so
    nothing downstream depends on their order."""
    out_shape = known_shape(node, where)
    if len(out_shape) <= axis:
        raise UnsupportedModelError(f"{where}: its result {out_shape} has no dim {axis} for the channels")
    builder.pin(layout)
    return builder.fixed_group(out_shape[axis], f"<{node.name}>", axis=axis)


def permute_layout(node: fx.Node, layout: Layout, where: str) -> Layout:
    """``permute`` / ``transpose``: the channels go wherever their axis goes."""
    ndim = len(known_shape(node.args[0], where))
    rest = node.args[1:]
    if target_name(node) == "permute":
        listed: Any = rest[0] if len(rest) == 1 and isinstance(rest[0], list | tuple) else rest
        dims: Any = listed or node.kwargs.get("dims", ())
        order = [int_arg(d, where) % ndim for d in dims]
        axis = order.index(layout.axis)
    else:
        given: Any = rest or (node.kwargs.get("dim0"), node.kwargs.get("dim1"))
        first, second = (int_arg(d, where) % ndim for d in given)
        axis = second if layout.axis == first else first if layout.axis == second else layout.axis
    if axis == 0:
        raise UnsupportedModelError(f"{where}: moves the channels to dim {axis}")
    return Layout(layout.groups, layout.repeat, axis)  # a channel's ``repeat`` positions move with their dim


def getitem_layout(builder: GroupBuilder, node: fx.Node, layout: Layout, where: str) -> Layout:
    """Indexing that leaves the batch axis whole (spatial crops, ``x[:, :, 0]``,
    ``y[:, :, None, None]``): the channels move by the axes added or removed before them; a
    slice of the channels by numbers in the code is ``channel_slice``."""
    ndim = len(known_shape(node.args[0], where))
    index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    if index.count(Ellipsis) > 1:
        raise UnsupportedModelError(f"{where}: indexing {index} has several ellipses")
    if Ellipsis in index:
        at, explicit = index.index(Ellipsis), sum(e is not None and e is not Ellipsis for e in index)
        index = index[:at] + (slice(None),) * (ndim - explicit) + index[at + 1 :]
    out_pos, in_dim, axis = 0, 0, None
    for entry in index:
        if entry is None:
            out_pos += 1
            continue
        if in_dim == layout.axis:
            if entry != slice(None):
                layout = channel_slice(builder, layout, entry, f"{where}: indexing {index}")
            axis = out_pos
        elif in_dim < layout.axis and (
            isinstance(entry, fx.Node) or (in_dim == 0 and isinstance(entry, int) and layout.axis == 1)
        ):  # an int on dim 0 before channels on dim 2 or later: a piece of q, k, v (channels stay off dim 0)
            raise UnsupportedModelError(f"{where}: indexing {index} moves or removes the batch dimension")
        out_pos += 0 if isinstance(entry, int) else 1
        in_dim += 1
    return Layout(layout.groups, layout.repeat, axis if axis is not None else out_pos + layout.axis - in_dim)


def channel_slice(builder: GroupBuilder, layout: Layout, entry: object, where: str) -> Layout:
    """``x[:, a:b]`` with ``a`` and ``b`` numbers written in the code (GhostNet's ``out[:, :oup]``,
    ReXNet's ``x[:, 0:c] + shortcut`` beside ``x[:, c:]``). The numbers do not change when
    channels go, so every channel before the slice's end must stay where it is: the channels
    before ``b`` are kept (before ``a`` when it runs to the end, ``x[:, a:]``), those after it
    prune freely, and a group that straddles a boundary is split there. A slice that reaches
    past the last channel (``b`` at least the width) stays whole however many channels go."""
    width = builder.width(layout)
    if not isinstance(entry, slice) or entry.step not in (None, 1) or layout.repeat != 1:
        raise UnsupportedModelError(f"{where} slices the channel dimension with a step or a tensor")
    start, stop = entry.start or 0, entry.stop
    if not isinstance(start, int) or not (stop is None or isinstance(stop, int)):
        raise UnsupportedModelError(f"{where} slices the channel dimension by sizes known only at run time")
    if start < 0 or (stop or 0) < 0:
        raise UnsupportedModelError(
            f"{where} slices the channel dimension counting from its end, which moves with every channel removed"
        )
    if stop is not None and stop >= width:
        stop = None  # to the end, now and after pruning
    fixed_until = start if stop is None else stop
    for at in (start, fixed_until):
        builder.split_at(layout, at, where)
    leaves = builder.leaves(layout)
    before = _groups_within(builder, leaves, 0, fixed_until)
    if before:
        builder.pin(Layout(before, axis=layout.axis))
    return Layout(_groups_within(builder, leaves, start, width if stop is None else stop), axis=layout.axis)


def _groups_within(builder: GroupBuilder, layout: Layout, start: int, stop: int) -> tuple[int, ...]:
    """The groups of ``layout`` (split at both ends already) that lie in positions [start, stop)."""
    found, offset = [], 0
    for group in layout.groups:
        size = builder.sizes[builder.find(group)]
        if start <= offset and offset + size <= stop:
            found.append(group)
        offset += size
    return tuple(found)


def shift_layout(builder: GroupBuilder, node: fx.Node, layout: Layout, where: str) -> Layout:
    """``flip`` / ``roll``: along other axes the channels stay; along theirs (or, for a ``roll``
    without dims, along the flattened tensor) they change places, so they are kept whole."""
    given: Any = arg(node, 1 if target_name(node) == "flip" else 2, "dims")
    ndim = len(known_shape(node.args[0], where))
    dims = [given] if isinstance(given, int) else list(given) if isinstance(given, list | tuple) else None
    if dims is None or layout.axis in {int_arg(d, where) % ndim for d in dims} or layout.repeat != 1:
        return reordered_layout(builder, node, layout, where)
    return layout


@op_rule("reshape", functions=RESHAPE_FUNCTIONS, methods=RESHAPE_METHODS)
@op_rule("axes", functions=AXIS_FUNCTIONS, methods=AXIS_METHODS)
def reshape_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    return reshape_layout(builder, call.node, call.first_layout(), call.where, call.layouts)


@op_rule("permute", functions=PERMUTE_FUNCTIONS, methods=PERMUTE_METHODS)
def permute_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    return permute_layout(call.node, call.first_layout(), call.where)


@op_rule("getitem", functions={operator.getitem})
def getitem_rule(builder: GroupBuilder, call: OpCall) -> Layout | None:
    """Indexing a tensor; indexing a python container of tensors is followed through its uses."""
    return getitem_layout(builder, call.node, call.first, call.where) if call.first is not None else None


@op_rule("shift", functions=SHIFT_FUNCTIONS, methods=SHIFT_METHODS)
def shift_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    return shift_layout(builder, call.node, call.first_layout(), call.where)


@op_rule("reorder", functions=REORDERING_FUNCTIONS)
def reorder_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    return reordered_layout(builder, call.node, call.first_layout(), call.where)


@op_rule("reshape_as", methods={"reshape_as", "view_as"})
def reshape_as_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    """``x.reshape_as(other)``: a reshape to ``other``'s shape, so the result's channels and
    ``other``'s must stay equal in number: coupled when both are traced on the same axis, else
    the result keeps its width (the shape comes from a tensor pruning does not change)."""
    result = reshape_layout(builder, call.node, call.first_layout(), call.where, call.layouts)
    source = call.node.args[1] if len(call.node.args) > 1 else None
    other = call.layouts.get(source) if isinstance(source, fx.Node) else None
    if isinstance(other, Layout) and (other.axis, other.repeat) == (result.axis, result.repeat):
        return builder.unify(result, other, call.where)
    builder.pin(result)
    if isinstance(other, Layout):
        builder.pin(other)
    return result
