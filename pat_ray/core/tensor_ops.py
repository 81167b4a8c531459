"""How the tracer maps channel layouts through tensor ops: element-wise ops between tensors,
flattening reshapes, spatial reductions, concatenation and indexing.

Each function gets the node and the layouts of its inputs and returns the result's layout, or
raises UnsupportedModelError naming the node: these are the rules ``groups.py`` applies.
"""

from __future__ import annotations

import math
from typing import Any

import torch.fx as fx

from pat_ray.core.graph import UnsupportedModelError
from pat_ray.core.layout import GroupBuilder, Layout, Traced


def shape_of(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def known_shape(node: Any, where: str) -> tuple[int, ...]:
    """``shape_of`` for a tensor whose shape a rule needs: unknown is the model's problem, named."""
    shape = shape_of(node)
    if shape is None:
        raise UnsupportedModelError(f"{where}: the shape of {node} is unknown (not a traced tensor)")
    return shape


def int_arg(value: object, where: str) -> int:
    """A dim argument the tracer can read (an int, not a value computed at run time)."""
    if not isinstance(value, int):
        raise UnsupportedModelError(f"{where}: dim {value!r} is not a constant int")
    return value


def binary_layout(
    b: GroupBuilder, node: fx.Node, shape: tuple[int, ...], layouts: dict[fx.Node, Traced], where: str
) -> Layout:
    """Element-wise op: operands that vary over the result's channels are coupled to them.

    Broadcasting aligns shapes from the right, so an operand's dim ``len(s) - len(shape) + 1``
    is the one that lines up with the result's channels (a ``(C,)`` weight times an
    ``(N, C)`` activation varies over channels; times an ``(N, C, H, W)`` one it does not)."""
    if len(shape) < 2:
        raise UnsupportedModelError(f"{where}: result has no channel dimension")
    channels = shape[1]
    wide: list[Layout] = []
    params: list[tuple[str, int]] = []
    for operand in (a for a in node.args if isinstance(a, fx.Node) and shape_of(a) is not None):
        traced, s = layouts.get(operand), known_shape(operand, where)
        lay = traced if isinstance(traced, Layout) else None
        axis = len(s) - len(shape) + 1
        extent = s[axis] if axis >= 0 else 1
        if lay is not None and axis == 1 and extent == channels:
            wide.append(lay)
        elif extent == 1:
            if lay is not None:
                b.pin(lay)  # broadcast across the result's channels: its own channels must stay
        elif lay is None and _is_parameter(b, operand):
            params.append((str(operand.target), axis))
        elif lay is None:
            raise UnsupportedModelError(
                f"{where}: a constant tensor of shape {s} varies over channels; pat_ray cannot slice it"
            )
        else:
            raise UnsupportedModelError(f"{where}: an operand's dim {axis} lines up with the result's channels")
    if not wide:
        raise UnsupportedModelError(f"{where}: no operand carries the result's channels")
    result = wide[0]
    for other in wide[1:]:
        result = b.unify(result, other, where)
    for target, axis in params:
        b.add_param(target, axis, result, where)
    return result


def _is_parameter(b: GroupBuilder, node: fx.Node) -> bool:
    """A ``get_attr`` of one of the model's own parameters or buffers (not a traced constant)."""
    if node.op != "get_attr":
        return False
    owner, _, name = str(node.target).rpartition(".")
    try:
        module = b.model.get_submodule(owner)
    except AttributeError:
        return False
    return name in dict(module.named_parameters(recurse=False)) or name in dict(module.named_buffers(recurse=False))


def reshape_layout(b: GroupBuilder, node: fx.Node, layout: Layout, where: str) -> Layout:
    in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
    if in_shape == out_shape:
        return layout
    if (
        in_shape is not None
        and out_shape is not None
        and len(out_shape) == 2
        and out_shape[0] == in_shape[0]
        and out_shape[1] == math.prod(in_shape[1:])
    ):
        return Layout(layout.groups, layout.repeat * math.prod(in_shape[2:]))
    raise UnsupportedModelError(
        f"{where}: reshape {in_shape} -> {out_shape}; only flattening (N, C, ...) to "
        "(N, C*...) keeps channels traceable"
    )


def reduce_layout(node: fx.Node, layout: Layout, shape: tuple[int, ...], where: str) -> Layout:
    in_shape = known_shape(node.args[0], where)
    given = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    listed = given if isinstance(given, list | tuple) else [] if given is None else [given]
    dims = [int_arg(d, where) for d in listed]
    ndim = len(in_shape)
    if dims and all(d % ndim >= 2 for d in dims) and len(shape) >= 2:
        return layout
    raise UnsupportedModelError(f"{where}: reduces over the batch or channel dimension")


def cat_layout(b: GroupBuilder, node: fx.Node, layouts: dict[fx.Node, Traced], where: str) -> Layout:
    tensors = node.args[0]
    dim = int_arg(node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0), where)
    found: list[Traced]
    if isinstance(tensors, fx.Node):  # the tuple a split returned
        traced = layouts.get(tensors)
        found = list(traced) if isinstance(traced, tuple) else [traced]
    else:
        listed = tensors if isinstance(tensors, list | tuple) else ()
        found = [layouts.get(t) if isinstance(t, fx.Node) else None for t in listed]
    parts = [p for p in found if isinstance(p, Layout)]
    if not parts or len(parts) != len(found):
        raise UnsupportedModelError(f"{where}: concatenates a tensor of unknown channels")
    ndim = len(known_shape(node, where))
    if dim % ndim == 1:
        if any(p.repeat != 1 for p in parts):
            raise UnsupportedModelError(f"{where}: concatenates flattened features")
        return Layout(tuple(g for p in parts for g in p.groups))
    result = parts[0]
    for other in parts[1:]:
        result = b.unify(result, other, where)
    return result


def getitem_layout(node: fx.Node, layout: Layout, where: str) -> Layout:
    index = node.args[1]
    index = index if isinstance(index, tuple) else (index,)
    channel_index = index[1] if len(index) > 1 else slice(None)
    if index and index[0] is Ellipsis:
        raise UnsupportedModelError(f"{where}: indexing with ... may slice channels")
    if channel_index == slice(None) and not isinstance(index[0], int):
        return layout
    raise UnsupportedModelError(f"{where}: indexing {index} slices the channel dimension")
