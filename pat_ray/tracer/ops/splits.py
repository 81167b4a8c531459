"""Tracing ops that return several tensors (``split``, ``chunk``, ``unbind``, ``tensor_split``).

Each piece of the result gets its own layout, so every later use of a piece (``getitem``,
``cat``, a conv) is traced like any other tensor. A split *across channels* is the subtle
case: the piece sizes are either constants in the model's code (``split``) or derived from
the channel count (``chunk``), so removing any channel of the input would change which
channels land in which piece. Such an input is pinned (kept whole); its pieces are
followed exactly, so the layers they feed can still be pruned. Equal pieces cut by their
count (``qkv.chunk(3, dim=-1)``, a gated MLP's ``x.chunk(2)``) stay equal when each loses
the same channels: channel ``i`` of every piece is then one channel, and the input prunes.
Splitting any other axis leaves the channels alone. ``glu`` is such a split in two, one half
gating the other.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping

import torch
import torch.fx as fx
import torch.nn.functional as F

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layout import Layout, Pieces, Traced
from pat_ray.tracer.nodes import arg, known_shape, size_derived_from, target_name
from pat_ray.tracer.ops.call import OpCall
from pat_ray.tracer.ops.registry import op_rule
from pat_ray.tracer.ops.shape import keep_channels_there
from pat_ray.tracer.state import GroupBuilder

# Ops that return a tuple of tensors; the tracer follows each piece.
SPLIT_FUNCTIONS = {torch.split, torch.chunk, torch.tensor_split, torch.unbind}
SPLIT_METHODS = {"split", "chunk", "tensor_split", "unbind"}


@op_rule("split", functions=SPLIT_FUNCTIONS, methods=SPLIT_METHODS, form="pieces")
def split_rule(builder: GroupBuilder, call: OpCall) -> Pieces:
    node = call.node
    dim_position = 1 if target_name(node) == "unbind" else 2  # of ``dim``, when given positionally
    in_shape = known_shape(node.args[0], call.where)
    pieces = split_layout(builder, node, call.inputs[0], dim_position, in_shape, call.pieces, call.where)
    _keep_channels_sizes_are_read_from(builder, node, call.layouts)
    return pieces


def _keep_channels_sizes_are_read_from(builder: GroupBuilder, node: fx.Node, layouts: Mapping[fx.Node, Traced]) -> None:
    """A piece size read at run time from another tensor's channels (FocalNet's ``c =
    x.shape[1]`` then ``split(proj(x), (c, c, k), 1)``) would change with them while the split's
    input keeps its boundaries: those channels keep their width too."""
    given = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections")
    for entry in given if isinstance(given, list | tuple) else [given]:
        read = size_derived_from(entry)
        source = layouts.get(read[0]) if read is not None else None
        if read is not None and isinstance(source, Layout) and read[1] % len(known_shape(read[0], "")) == source.axis:
            builder.pin(source)


def split_layout(
    builder: GroupBuilder,
    node: fx.Node,
    layout: Layout,
    dim_position: int,
    in_shape: tuple[int, ...],
    piece_shapes: list[tuple[int, ...] | None],
    where: str,
) -> Pieces:
    """The layouts of the pieces a multi-output op cuts ``layout``'s tensor into."""
    dim = arg(node, dim_position, "dim", 0)
    if not isinstance(dim, int):
        raise UnsupportedModelError(f"{where}: splits along a dimension known only at run time ({dim!r})")
    axis = dim % len(in_shape)
    unbinds = any(s is not None and len(s) < len(in_shape) for s in piece_shapes)
    if axis == 0 and unbinds and layout.axis == 1:
        raise UnsupportedModelError(f"{where}: unbinds the batch dimension, so channels move to dim 0")
    if axis != layout.axis:
        moved = Layout(layout.groups, layout.repeat, layout.axis - (unbinds and axis < layout.axis))
        return tuple(moved if s is not None else None for s in piece_shapes)
    sections = arg(node, 1, "chunks" if target_name(node) == "chunk" else "indices_or_sections")
    by_count = target_name(node) in ("chunk", "tensor_split") and isinstance(sections, int) and not unbinds
    equal = not unbinds and all(s is not None and s[axis] * len(piece_shapes) == in_shape[axis] for s in piece_shapes)
    tied = builder.tie_equal_pieces(layout, len(piece_shapes), where) if by_count and equal else None
    if tied is not None:
        return tied
    builder.pin(layout)  # piece boundaries are fixed by the code, or by the count of unequal pieces
    widths = [1 if unbinds else (s[axis] if s is not None else 0) for s in piece_shapes]
    aligned = _aligned_pieces(builder, layout, widths)
    if aligned is not None and not unbinds:
        return aligned
    return tuple(
        builder.fixed_channels(f"<{node.name}[{i}]>", s, None if unbinds else axis) if s is not None else None
        for i, s in enumerate(piece_shapes)
    )


def _aligned_pieces(builder: GroupBuilder, layout: Layout, widths: list[int]) -> Pieces | None:
    """The input's own groups for each piece, when every boundary falls between groups."""
    if layout.repeat != 1:
        return None
    pieces: list[Layout | None] = []
    groups = list(builder.leaves(layout).groups)
    for width in widths:
        taken: list[int] = []
        while groups and sum(builder.sizes[builder.find(g)] for g in taken) < width:
            taken.append(groups.pop(0))
        if sum(builder.sizes[builder.find(g)] for g in taken) != width:
            return None
        pieces.append(Layout(tuple(taken), axis=layout.axis) if taken else None)
    return tuple(pieces) if not groups else None


@op_rule("glu", functions={F.glu})
def glu_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    return gated_halves(builder, call.node, call.first_layout(), arg(call.node, 1, "dim", -1), call.where)


def gated_halves(builder: GroupBuilder, node: fx.Node, layout: Layout, dim: object, where: str) -> Layout:
    """``glu(x, dim)``: ``a * sigmoid(b)`` of ``x``'s two halves along ``dim``. Across the
    channels, channel ``i`` of ``a`` and of ``b`` make output channel ``i``: the halves lose the
    same channels (as ``x.chunk(2)`` multiplied); where they cannot, ``x`` is kept whole."""
    in_shape = known_shape(node.args[0], where)
    if not isinstance(dim, int):
        raise UnsupportedModelError(f"{where}: gates along a dimension known only at run time ({dim!r})")
    axis = dim % len(in_shape)
    if axis != layout.axis:
        return layout  # halves another dim: the channels pass
    halves = builder.tie_equal_pieces(layout, 2, where)
    if halves is not None and isinstance(halves[0], Layout):
        return halves[0]
    return keep_channels_there(builder, node, layout, axis, where)


_NAMED_PIECES = {"values": 0, "indices": 1}  # torch.return_types fields


@op_rule("pick", functions={operator.getitem, getattr}, form="tuple")
def pick_rule(builder: GroupBuilder, call: OpCall) -> Layout | Pieces | None:
    pieces = call.layouts[call.node.args[0]]  # type: ignore[index]
    assert isinstance(pieces, tuple), "a rule of form tuple reads a multi-output node's pieces"
    return pick(call.node, pieces, call.where)


def pick(node: fx.Node, pieces: Pieces, where: str) -> Layout | Pieces | None:
    """``pieces[i]`` or ``pieces[a:b]`` of a multi-output op's result, or the ``.values`` /
    ``.indices`` of a ``(values, indices)`` one."""
    index = _NAMED_PIECES.get(node.args[1], node.args[1]) if isinstance(node.args[1], str) else node.args[1]
    if isinstance(index, int | slice):
        return pieces[index]
    raise UnsupportedModelError(f"{where}: indexes a tuple of tensors with {index!r}")
