"""Max pooling that also returns where each maximum came from, and unpooling by those indices
(SegNet's decoder puts each value back where its encoder's pooling found it): the values and
the indices both have the input's channels, channel ``i`` of the indices says where channel
``i``'s maxima were, so unpooling couples the two and returns the values' channels."""

from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layout import Layout, Pieces, Traced
from pat_ray.tracer.nodes import arg, known_shape
from pat_ray.tracer.ops.call import OpCall
from pat_ray.tracer.ops.registry import op_rule
from pat_ray.tracer.state import GroupBuilder

POOL_WITH_INDICES = {
    F.max_pool1d_with_indices,
    F.max_pool2d_with_indices,
    F.max_pool3d_with_indices,
    F.adaptive_max_pool1d_with_indices,
    F.adaptive_max_pool2d_with_indices,
    F.adaptive_max_pool3d_with_indices,
    F.fractional_max_pool2d_with_indices,
    F.fractional_max_pool3d_with_indices,
}
UNPOOL = {F.max_unpool1d, F.max_unpool2d, F.max_unpool3d}


def with_indices(layout: Layout, in_shape: tuple[int, ...], shapes: list[tuple[int, ...] | None]) -> Pieces | None:
    """The values and the indices of a pooling: each as wide as the input (None: not such a pair)."""
    if len(shapes) != 2 or any(s is None or len(s) != len(in_shape) for s in shapes):
        return None
    return (layout, layout)


def unpooled(builder: GroupBuilder, values: Layout, indices: Traced, where: str) -> Layout:
    """Values put back by their indices: channel ``i`` of each goes together; indices the code
    made (not a pooling's) keep the values' channels whole."""
    if isinstance(indices, Layout):
        return builder.unify(values, indices, where)
    if indices is not None:
        raise UnsupportedModelError(f"{where}: unpools by a tuple of tensors")
    builder.pin(values)
    return values


@op_rule("pool_indices", functions=POOL_WITH_INDICES, form="pieces")
def pool_indices_rule(builder: GroupBuilder, call: OpCall) -> Pieces:
    pieces = with_indices(call.inputs[0], known_shape(call.node.args[0], call.where), call.pieces)
    if pieces is None:
        raise UnsupportedModelError(f"{call.where}: returns tensors pat_ray cannot read as values and indices")
    return pieces


@op_rule("unpool", functions=UNPOOL)
def unpool_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    indices = arg(call.node, 1, "indices")
    traced = call.layouts.get(indices) if isinstance(indices, fx.Node) else None
    return unpooled(builder, call.first_layout(), traced, call.where)
