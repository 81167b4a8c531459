"""How the tracer maps channel layouts through tensor ops: element-wise ops between tensors,
flattening reshapes, spatial reductions, concatenation and indexing.

Each function gets the node and the layouts of its inputs and returns the result's layout, or
raises UnsupportedModelError naming the node: these are the rules ``groups.py`` applies.
"""

from __future__ import annotations

import math
from typing import Any

import torch.fx as fx
from torch import nn

from pat_ray.core.fx_trace import shape_of
from pat_ray.core.graph import UnsupportedModelError
from pat_ray.core.layout import GroupBuilder, Layout, Traced


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

    Broadcasting aligns shapes from the right, so an operand's dim ``d`` lines up with the
    result's dim ``len(shape) - len(s) + d`` (a ``(C,)`` weight times an ``(N, C)`` activation
    varies over channels; times an ``(N, C, H, W)`` one it does not)."""
    operands = [(a, known_shape(a, where)) for a in node.args if isinstance(a, fx.Node) and shape_of(a) is not None]
    traced = [(layouts.get(a), s) for a, s in operands]
    with_layout = [(lay, s) for lay, s in traced if isinstance(lay, Layout)]
    wide = [lay for lay, s in with_layout if s[lay.axis] == shape[len(shape) - len(s) + lay.axis]]
    axes = {len(shape) - len(s) + lay.axis for lay, s in with_layout if lay in wide}
    if len(axes) > 1:  # channels on different dims: a pinned operand's never change, so they give way
        wide = [lay for lay in wide if not b.is_pinned(lay)] or wide[:1]
        axes = {len(shape) - len(s) + lay.axis for lay, s in with_layout if any(lay is w for w in wide)}
    if not wide or len(axes) != 1:
        raise UnsupportedModelError(
            f"{where}: no operand carries the result's channels"
            if not wide
            else f"{where}: its operands hold channels on different dims of the result ({sorted(axes)})"
        )
    channel_axis = axes.pop()
    for (operand, s), (lay, _) in zip(operands, traced):
        dim = len(s) - len(shape) + channel_axis  # the operand's dim that lines up with the channels
        extent = s[dim] if dim >= 0 else 1
        if isinstance(lay, Layout) and any(lay is w for w in wide):
            continue
        if extent == 1:
            if isinstance(lay, Layout):
                b.pin(lay)  # broadcast across the result's channels: its own channels must stay
        elif lay is None and is_parameter(b, operand):
            b.add_param(str(operand.target), dim, wide[0], where)
            b.count_param(str(operand.target), wide[0])
        elif lay is None:
            raise UnsupportedModelError(
                f"{where}: a constant tensor of shape {s} varies over channels; pat_ray cannot slice it"
            )
        elif isinstance(lay, Layout) and b.is_pinned(
            lay
        ):  # a fixed-width axis of it meets the channels: they must stay too
            for w in wide:
                b.pin(w)
        else:
            raise UnsupportedModelError(f"{where}: an operand's dim {dim} lines up with the result's channels")
    result = wide[0]
    for other in wide[1:]:
        result = b.unify(result, other, where)
    return result


def is_parameter(b: GroupBuilder, node: fx.Node) -> bool:
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
    """A reshape that keeps the channel axis whole (or flattens (N, C, ...) to (N, C*...)) is
    followed exactly. Any other (a channel shuffle's view to (N, groups, C/groups, ...),
    space-to-depth) moves channels among other axes: its input is kept whole (pinned) and its
    result's dim 1 is a new pinned group, so nothing downstream depends on their order."""
    result = _reshaped(b, node, layout, where)
    if size_written_in_code(b, node, result.axis):
        b.pin(layout)  # ``x.view(-1, 16 * 5 * 5)``: the code, not the tensor, says how many channels
    return result


def _reshaped(b: GroupBuilder, node: fx.Node, layout: Layout, where: str) -> Layout:
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
    return reordered_layout(b, node, layout, where)


def size_written_in_code(b: GroupBuilder, node: fx.Node, axis: int) -> bool:
    """Whether the size a ``view`` / ``reshape`` / ``expand`` / ``nn.Unflatten`` gives its result's
    ``axis`` is a number in the model's code (it would not follow the pruned channel count), or
    cannot be read. ``-1`` and sizes read from tensors at run time (``x.size(1)``) follow it."""
    if node.op == "call_module":
        module = b.model.get_submodule(str(node.target))
        if not isinstance(module, nn.Unflatten):
            return False
        sizes = list(module.unflattened_size)
        first = module.dim % len(known_shape(node.args[0], "")) if isinstance(module.dim, int) else 0
        return first <= axis < first + len(sizes) and sizes[axis - first] != -1
    name = getattr(node.target, "__name__", node.target)
    if name not in ("view", "reshape", "expand"):
        return False
    written = size_arguments(node, 1, "shape", "size")
    if isinstance(written, fx.Node) or axis >= len(written):
        return True
    return isinstance(written[axis], int) and written[axis] != -1


def size_arguments(node: fx.Node, first: int, *keywords: str) -> Any:
    """The sizes an op was given from positional argument ``first`` on, as ``f(x, 2, 3)``,
    ``f(x, (2, 3))`` or a keyword; one node when the whole size is computed at run time."""
    given: Any = next((node.kwargs[k] for k in keywords if k in node.kwargs), node.args[first:])
    if isinstance(given, tuple) and len(given) == 1 and isinstance(given[0], list | tuple | fx.Node):
        return given[0]
    return given


def reordered_layout(b: GroupBuilder, node: fx.Node, layout: Layout, where: str) -> Layout:
    """An op that moves channels to other positions or axes (a channel shuffle, pixel shuffle,
    a reshape that splits the channel axis): pruning its input would change which channel
    lands where, so the input is kept whole and the result's dim 1 is a new pinned group."""
    out_shape = known_shape(node, where)
    if len(out_shape) < 2:
        raise UnsupportedModelError(f"{where}: its result {out_shape} has no channel dimension")
    b.pin(layout)
    return b.new_group(out_shape[1], f"<{node.name}>", pinned=True)


def permute_layout(node: fx.Node, layout: Layout, where: str) -> Layout:
    """``permute`` / ``transpose``: the channels go wherever their axis goes."""
    ndim = len(known_shape(node.args[0], where))
    rest = node.args[1:]
    if str(getattr(node.target, "__name__", node.target)) == "permute":
        listed: Any = rest[0] if len(rest) == 1 and isinstance(rest[0], list | tuple) else rest
        dims: Any = listed or node.kwargs.get("dims", ())
        order = [int_arg(d, where) % ndim for d in dims]
        axis = order.index(layout.axis)
    else:
        given: Any = rest or (node.kwargs.get("dim0"), node.kwargs.get("dim1"))
        first, second = (int_arg(d, where) % ndim for d in given)
        axis = second if layout.axis == first else first if layout.axis == second else layout.axis
    if axis == 0 or (layout.repeat != 1 and axis != layout.axis):
        raise UnsupportedModelError(f"{where}: moves the channels to dim {axis}")
    return Layout(layout.groups, layout.repeat, axis)


def _listed_layouts(tensors: Any, layouts: dict[fx.Node, Traced]) -> list[Traced]:
    """The layouts of a cat's / stack's tensors: a list of nodes, or the tuple a split returned."""
    if isinstance(tensors, fx.Node):
        traced = layouts.get(tensors)
        return list(traced) if isinstance(traced, tuple) else [traced]
    listed = tensors if isinstance(tensors, list | tuple) else ()
    return [layouts.get(t) if isinstance(t, fx.Node) else None for t in listed]


def cat_layout(b: GroupBuilder, node: fx.Node, layouts: dict[fx.Node, Traced], where: str) -> Layout:
    dim = int_arg(node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0), where)
    found = _listed_layouts(node.args[0], layouts)
    parts = [p for p in found if isinstance(p, Layout)]
    if not parts or len(parts) != len(found):
        raise UnsupportedModelError(f"{where}: concatenates a tensor of unknown channels")
    ndim = len(known_shape(node, where))
    if any(dim % ndim == p.axis for p in parts):
        if any(p.repeat != 1 or p.axis != parts[0].axis for p in parts):
            raise UnsupportedModelError(f"{where}: concatenates flattened features or differently laid out channels")
        return Layout(tuple(g for p in parts for g in p.groups), 1, parts[0].axis)
    result = parts[0]
    for other in parts[1:]:
        result = b.unify(result, other, where)
    return result


def getitem_layout(node: fx.Node, layout: Layout, where: str) -> Layout:
    """Indexing that leaves the batch and channel axes whole (spatial crops, ``x[:, :, 0]``,
    ``y[:, :, None, None]``): the channels move by the axes added or removed before them."""
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
                raise UnsupportedModelError(f"{where}: indexing {index} slices the channel dimension")
            axis = out_pos
        elif in_dim < layout.axis and (isinstance(entry, fx.Node) or (in_dim == 0 and isinstance(entry, int))):
            raise UnsupportedModelError(f"{where}: indexing {index} moves or removes the batch dimension")
        out_pos += 0 if isinstance(entry, int) else 1
        in_dim += 1
    return Layout(layout.groups, layout.repeat, axis if axis is not None else out_pos + layout.axis - in_dim)


def shift_layout(b: GroupBuilder, node: fx.Node, layout: Layout, where: str) -> Layout:
    """``flip`` / ``roll``: along other axes the channels stay; along theirs (or, for a ``roll``
    without dims, along the flattened tensor) they change places, so they are kept whole."""
    name = getattr(node.target, "__name__", node.target)
    position = 1 if name == "flip" else 2
    given: Any = node.kwargs.get("dims", node.args[position] if len(node.args) > position else None)
    ndim = len(known_shape(node.args[0], where))
    dims = [given] if isinstance(given, int) else list(given) if isinstance(given, list | tuple) else None
    if dims is None or layout.axis in {int_arg(d, where) % ndim for d in dims} or layout.repeat != 1:
        return reordered_layout(b, node, layout, where)
    return layout


def repeat_layout(node: fx.Node, layout: Layout, where: str) -> Layout:
    """``x.repeat(1, r, 1, 1)`` / ``tile``: the channels ``r`` times over, like a ``cat`` of copies."""
    given = size_arguments(node, 1, "dims", "repeats")
    factors: list[Any] = [given] if isinstance(given, fx.Node) else list(given)
    ndim = len(known_shape(node.args[0], where))
    factors = [1] * (ndim - len(factors)) + factors  # tile pads on the left
    if len(factors) != ndim or not all(isinstance(f, int) for f in factors):
        raise UnsupportedModelError(f"{where}: repeats by {factors}: new leading axes or counts known only at run time")
    factor = factors[layout.axis]
    if factor != 1 and layout.repeat != 1:
        raise UnsupportedModelError(f"{where}: tiles flattened features")
    return Layout(layout.groups * factor, layout.repeat, layout.axis)


def created_layout(b: GroupBuilder, node: fx.Node, shape: tuple[int, ...]) -> Layout | None:
    """A tensor made from a size (``torch.zeros(n, 8, h, w)``, ``x.new_zeros(...)``): with its
    channel count written in the code it is fixed channels (a ``cat`` of it keeps them); with
    a count read at run time nothing is known of them (None: whatever uses them is refused)."""
    written = size_arguments(node, 1 if node.op == "call_method" else 0, "size")  # new_zeros' tensor first
    if isinstance(written, fx.Node) or len(written) <= 1 or not isinstance(written[1], int):
        return None
    return fresh_channels(b, node, shape, None)


def fresh_channels(b: GroupBuilder, node: fx.Node, shape: tuple[int, ...], axis: int | None) -> Layout | None:
    """A new pinned group for a result whose channels no longer follow its input's: on ``axis``,
    or, when the channel axis is gone, on dim 1 as for a model input (None for fewer dims)."""
    axis = 1 if axis is None else axis
    return b.new_group(shape[axis], f"<{node.name}>", pinned=True, axis=axis) if len(shape) > axis else None


def stack_layout(b: GroupBuilder, node: fx.Node, layouts: dict[fx.Node, Traced], where: str) -> Layout:
    """``torch.stack``: its tensors are coupled (like an element-wise op's operands, the safe
    reading for whatever combines them later), their channels one axis further right when
    the new axis comes before them."""
    parts = _listed_layouts(node.args[0], layouts)
    if not parts or not all(isinstance(p, Layout) and p.repeat == 1 for p in parts):
        raise UnsupportedModelError(f"{where}: stacks a tensor of unknown channels or flattened features")
    layouts_in = [p for p in parts if isinstance(p, Layout)]
    result = layouts_in[0]
    for other in layouts_in[1:]:
        result = b.unify(result, other, where)
    dim = int_arg(node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0), where)
    new_axis = dim % len(known_shape(node, where))
    if new_axis == 0:
        raise UnsupportedModelError(f"{where}: stacks on dim 0, in front of the batch dimension")
    return Layout(result.groups, 1, result.axis + (new_axis <= result.axis))


def pad_layout(b: GroupBuilder, node: fx.Node, layout: Layout, where: str) -> Layout:
    """``F.pad``: padding the channel axis with a constant (ResNet's parameter-free "option A"
    shortcut) adds channels that are always zero: pinned groups around the input's."""
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad", ())
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    pairs = [int_arg(p, where) for p in pad] if isinstance(pad, list | tuple) else []
    last = len(known_shape(node.args[0], where)) - 1 - layout.axis  # pad's pairs start at the last axis
    before, after = pairs[2 * last : 2 * last + 2] if len(pairs) >= 2 * last + 2 else (0, 0)
    if not (before or after):
        return layout
    if mode != "constant" or layout.repeat != 1 or before < 0 or after < 0:
        raise UnsupportedModelError(f"{where}: pads (or crops) the channels with mode {mode!r}")

    def zeros(n: int, side: str) -> list[int]:
        return list(b.new_group(n, f"<{node.name} {side}>", True).groups) if n else []

    groups = zeros(before, "before") + list(layout.groups) + zeros(after, "after")
    return Layout(tuple(groups), 1, layout.axis)
