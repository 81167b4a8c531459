"""How the tracer follows reductions (``mean``, ``amax``, ``std``, ``var_mean``...) and the ops that return
``(values, indices)`` along one dim (``max(x, dim)``, ``median``, ``sort``, ``topk``).

Over spatial dims the channels survive (global pooling). Over the channel axis they are
consumed: CBAM's spatial attention takes ``mean`` and ``max`` over channels, and after
pruning it simply reduces over the channels that are left, so the input stays prunable and
the result is a new pinned group (one channel with ``keepdim``). An op whose result depends
on how many channels there are or in what order they come (``topk`` / ``kthvalue`` need at
least ``k``; ``sort`` / ``cummax`` return a channel-sized mix) keeps its input whole.
Reducing the batch axis away is refused: it would move the channels to dim 0.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layout import Layout, Pieces
from pat_ray.tracer.nodes import arg, int_arg, known_shape, target_name
from pat_ray.tracer.ops.call import OpCall
from pat_ray.tracer.ops.registry import op_rule
from pat_ray.tracer.state import GroupBuilder

# Reductions that keep channels when they reduce only spatial dimensions.
# Over the channel axis they consume the channels (below).
REDUCTION_FUNCTIONS = {
    torch.mean,
    torch.sum,
    torch.amax,
    torch.amin,
    torch.prod,
    torch.std,
    torch.var,
    torch.logsumexp,
    torch.nansum,
    torch.nanmean,
    torch.argmax,
    torch.argmin,
}
REDUCTION_METHODS = set("mean sum amax amin prod std var logsumexp nansum nanmean argmax argmin".split())
# Norms over listed dims: a reduction whose ``dim`` comes after ``p`` (``x.norm(2, 1, True)``).
NORM_FUNCTIONS = {torch.norm, torch.linalg.vector_norm}
NORM_METHODS = {"norm"}
# ``max`` / ``min``: element-wise with a second tensor, a reduction without (with a dim: a tuple).
MINMAX_FUNCTIONS = {torch.max, torch.min}
MINMAX_METHODS = {"max", "min"}


# Ops returning (values, indices) along ``dim``: their kind and where ``dim`` sits among the
# positional arguments after the tensor (its default when not given: -1, or None if required).
# "reduce": removes the dim (or keeps it at size 1); "select": keeps k of it; "reorder": keeps its size.
_INDEXED: dict[str, tuple[str, int, int | None]] = {
    "max": ("reduce", 1, None),
    "min": ("reduce", 1, None),
    "median": ("reduce", 1, -1),
    "nanmedian": ("reduce", 1, -1),
    "mode": ("reduce", 1, -1),
    "kthvalue": ("select", 2, -1),
    "topk": ("select", 2, -1),
    "sort": ("reorder", 1, -1),
    "cummax": ("reorder", 1, None),
    "cummin": ("reorder", 1, None),
}
INDEXED_FUNCTIONS = {getattr(torch, name) for name in _INDEXED}
INDEXED_METHODS = set(_INDEXED)


@op_rule("reduce", functions=REDUCTION_FUNCTIONS, methods=REDUCTION_METHODS)
def reduce_rule(builder: GroupBuilder, call: OpCall) -> Layout | None:
    """``mean`` / ``sum`` / ``amax``... over the listed dims (all of them when none is given)."""
    return _reduce_layout(builder, call, dim_position=1)


@op_rule("norm", functions=NORM_FUNCTIONS, methods=NORM_METHODS)
def norm_rule(builder: GroupBuilder, call: OpCall) -> Layout | None:
    """``norm(x, p, dim)``: a reduction whose ``dim`` comes after ``p``."""
    return _reduce_layout(builder, call, dim_position=2)


def _reduce_layout(builder: GroupBuilder, call: OpCall, dim_position: int) -> Layout | None:
    node, layout, where = call.node, call.first_layout(), call.where
    ndim = len(known_shape(node.args[0], where))
    return _reduced(builder, node, layout, _dims(node, dim_position, ndim, where), call.shape, ndim, where)


def _dims(node: fx.Node, position: int, ndim: int, where: str) -> set[int]:
    """The dims a reduction was given (one, or a list), every dim when none."""
    given = arg(node, position, "dim")
    listed = given if isinstance(given, list | tuple) else [] if given is None else [given]
    return {int_arg(d, where) % ndim for d in listed} if listed else set(range(ndim))


@op_rule("moments", functions={torch.var_mean, torch.std_mean}, form="pieces")
def moments_rule(builder: GroupBuilder, call: OpCall) -> Pieces:
    """``var_mean`` / ``std_mean``: two reductions over the same dims, alike."""
    node, layout, where = call.node, call.inputs[0], call.where
    ndim, pieces = len(known_shape(node.args[0], where)), call.pieces
    if pieces[0] is None:
        raise UnsupportedModelError(f"{where}: returns no tensors pat_ray can read")
    result = _reduced(builder, node, layout, _dims(node, 1, ndim, where), pieces[0], ndim, where)
    return tuple(result for _ in pieces)


@op_rule("indexed", functions=INDEXED_FUNCTIONS, methods=INDEXED_METHODS, form="pieces")
def indexed_rule(builder: GroupBuilder, call: OpCall) -> Pieces:
    """The layouts of the ``(values, indices)`` an ``_INDEXED`` op returns (both alike)."""
    node, layout, pieces, where = call.node, call.inputs[0], call.pieces, call.where
    kind, position, default = _INDEXED[target_name(node)]
    dim: Any = arg(node, position, "dim", default)
    values = pieces[0]
    if dim is None or values is None:
        raise UnsupportedModelError(f"{where}: returns several tensors without a dim pat_ray can read")
    ndim = len(known_shape(node.args[0], where))
    axis = int_arg(dim, where) % ndim
    if axis == layout.axis and kind != "reduce":
        builder.pin(layout)  # needs k channels, or returns a channel-sized mix of them
    result = _reduced(builder, node, layout, {axis}, values, ndim, where)  # "select" / "reorder" keep the dim
    return tuple(result if s is not None else None for s in pieces)


def _reduced(
    builder: GroupBuilder, node: fx.Node, layout: Layout, dims: set[int], shape: tuple[int, ...], ndim: int, where: str
) -> Layout | None:
    """The layout of a result with ``dims`` reduced (kept at size 1 when ``shape`` has ``ndim`` dims)."""
    keepdim = len(shape) == ndim
    if layout.axis in dims:  # the channels are consumed here
        return builder.fixed_channels(f"<{node.name}>", shape, layout.axis if keepdim else None)
    if layout.repeat != 1:
        raise UnsupportedModelError(f"{where}: reduces flattened features over another dimension")
    axis = layout.axis if keepdim else layout.axis - sum(d < layout.axis for d in dims)
    if axis == 0:
        raise UnsupportedModelError(f"{where}: reduces over the batch dimension, which moves the channels to dim 0")
    return Layout(layout.groups, 1, axis)
