"""Reading one fx node: the shapes recorded on it, its arguments, and how errors name it.

Every rule needs the same few readings of a node (an argument given by position or by
keyword, a dim that must be a constant, the recorded shape of a tensor); they live here once
so that a rule reads as what it decides, not as argument plumbing.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator
from typing import Any

import torch.fx as fx
from torch import nn

from pat_ray.errors import UnsupportedModelError

SHAPE = "pat_ray_shape"  # node.meta key: the shape of a node's tensor result
PIECE_SHAPES = "pat_ray_piece_shapes"  # node.meta key: per item of a tuple / list result, its PieceShape
PRODUCT_MACS = "pat_ray_product_macs"  # node.meta key: MACs of the products run inside a library function
RETURNED_ARGUMENT = "pat_ray_returned_argument"  # node.meta key: the argument a library function returned as is

PieceShape = tuple[int, ...] | None | list["PieceShape"]  # a tensor's shape, not a tensor, or a nested tuple


def shape_of(node: Any) -> tuple[int, ...] | None:
    """The recorded shape of ``node``'s result; None when it is not one tensor."""
    return node.meta.get(SHAPE) if isinstance(node, fx.Node) else None


def piece_shapes(node: fx.Node) -> list[PieceShape] | None:
    """The shape of each item of ``node``'s result when it returned a tuple or list of tensors
    (an LSTM's ``(out, (h, c))`` nests)."""
    return node.meta.get(PIECE_SHAPES)


def known_shape(node: Any, where: str) -> tuple[int, ...]:
    """``shape_of`` for a tensor whose shape a rule needs: unknown is the model's problem, named."""
    shape = shape_of(node)
    if shape is None:
        raise UnsupportedModelError(f"{where}: the shape of {node} is unknown (not a traced tensor)")
    return shape


def arg(node: fx.Node, position: int, keyword: str, default: Any = None) -> Any:
    """The argument a call was given as ``keyword=`` or at ``position`` (``default`` if neither)."""
    if keyword in node.kwargs:
        return node.kwargs[keyword]
    return node.args[position] if len(node.args) > position else default


def int_arg(value: object, where: str) -> int:
    """A dim argument the tracer can read (an int, not a value computed at run time)."""
    if not isinstance(value, int):
        raise UnsupportedModelError(f"{where}: dim {value!r} is not a constant int")
    return value


def size_arguments(node: fx.Node, first: int, *keywords: str) -> Any:
    """The sizes an op was given from positional argument ``first`` on, as ``f(x, 2, 3)``,
    ``f(x, (2, 3))`` or a keyword; one node when the whole size is computed at run time."""
    given: Any = next((node.kwargs[k] for k in keywords if k in node.kwargs), node.args[first:])
    if isinstance(given, tuple) and len(given) == 1 and isinstance(given[0], list | tuple | fx.Node):
        return given[0]
    return given


def target_name(node: fx.Node) -> str:
    """A call's target as written: ``view`` for ``x.view(...)``, ``cat`` for ``torch.cat``."""
    return str(getattr(node.target, "__name__", node.target))


def describe(node: fx.Node) -> str:
    """How an error names a node: ``node 'add_3' (call_function add)``."""
    return f"node {node.name!r} ({node.op} {target_name(node)})"


def is_parameter(model: nn.Module, node: fx.Node) -> bool:
    """A ``get_attr`` of one of the model's own parameters or buffers (not a traced constant)."""
    if node.op != "get_attr":
        return False
    owner, _, name = str(node.target).rpartition(".")
    try:
        module = model.get_submodule(owner)
    except AttributeError:
        return False
    return name in dict(module.named_parameters(recurse=False)) or name in dict(module.named_buffers(recurse=False))


def size_written_in_code(model: nn.Module, node: fx.Node, axis: int) -> bool:
    """Whether the size a ``view`` / ``reshape`` / ``expand`` / ``nn.Unflatten`` gives its result's
    ``axis`` is a number in the model's code (it would not follow the pruned channel count), or
    cannot be read. ``-1`` and sizes read from tensors at run time (``x.size(1)``) follow it."""
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        if not isinstance(module, nn.Unflatten):
            return False
        return _unflattened_size_written(node, module.dim, module.unflattened_size, axis)
    if target_name(node) == "unflatten":
        return _unflattened_size_written(node, arg(node, 1, "dim"), arg(node, 2, "sizes"), axis)
    if target_name(node) not in ("view", "reshape", "expand"):
        return False
    written = size_arguments(node, 1, "shape", "size")
    if isinstance(written, fx.Node) or axis >= len(written):
        return True
    return isinstance(written[axis], int) and written[axis] != -1


def _unflattened_size_written(node: fx.Node, dim: object, sizes: Any, axis: int) -> bool:
    """``unflatten(dim, sizes)``: whether ``axis`` of the result is one of ``sizes`` written as a
    number (``-1`` and a size read from a tensor follow the channels, as in a ``view``)."""
    if not isinstance(sizes, list | tuple) or not isinstance(dim, int):
        return True
    first = dim % len(known_shape(node.args[0], ""))
    if not first <= axis < first + len(sizes):
        return False
    entry = sizes[axis - first]
    return isinstance(entry, int) and entry != -1


# Ops that give a parameter's values new axes or a new order without mixing them: a parameter
# read through them (``self.cls_token.expand(b, -1, -1)``, ``self.gamma.view(1, -1, 1, 1)``) can
# still be sliced along the dim that lines up with the channels.
_SAME_DIMS = {"to", "type", "type_as", "float", "half", "bfloat16", "contiguous", "clone", "detach"}
_REGROUPING = {"view", "reshape", "unsqueeze", "squeeze", "flatten"}
_BROADCASTING = {"expand", "expand_as"}


def parameter_dim(model: nn.Module, node: fx.Node, dim: int) -> tuple[str, int] | None:
    """The model parameter (dotted name) and its dim whose values fill ``dim`` of ``node``'s
    result, following the parameter through views, ``expand`` and dtype casts; None when the
    values there are not one parameter's (a constant, a computed tensor, a broadcast axis, a
    size written in the code that would not follow a sliced parameter)."""
    while node.op != "get_attr":
        if node.op not in ("call_method", "call_function") or not node.args or not isinstance(node.args[0], fx.Node):
            return None
        source, name = node.args[0], target_name(node)
        out_shape, in_shape = shape_of(node), shape_of(source)
        if out_shape is None or in_shape is None or size_written_in_code(model, node, dim):
            return None
        if name in _SAME_DIMS:
            mapped: int | None = dim
        elif name in _BROADCASTING:
            mapped = dim - (len(out_shape) - len(in_shape))
            mapped = mapped if mapped >= 0 and in_shape[mapped] == out_shape[dim] else None
        elif name in _REGROUPING:
            mapped = same_axis(in_shape, out_shape, dim)
        elif name == "permute":
            order = [d for a in node.args[1:] for d in (a if isinstance(a, list | tuple) else (a,))]
            chosen = order[dim] if len(order) == len(out_shape) else None
            mapped = chosen % len(in_shape) if isinstance(chosen, int) else None
        elif name == "getitem":
            mapped = _gathered_dim(node, in_shape, out_shape, dim)
        else:
            return None
        if mapped is None:
            return None
        node, dim = source, mapped
    return (str(node.target), dim) if is_parameter(model, node) else None


def _gathered_dim(node: fx.Node, in_shape: tuple[int, ...], out_shape: tuple[int, ...], dim: int) -> int | None:
    """``table[index]`` with an index tensor on dim 0 (a relative position bias gathered from
    its table): the result's trailing dims are the table's dims after the first."""
    index = node.args[1]
    index = index[0] if isinstance(index, tuple) and len(index) == 1 else index
    index_shape = shape_of(index) if isinstance(index, fx.Node) else None
    if index_shape is None or len(out_shape) != len(index_shape) + len(in_shape) - 1:
        return None
    mapped = dim - len(index_shape) + 1
    return mapped if mapped >= 1 else None


def same_axis(in_shape: tuple[int, ...], out_shape: tuple[int, ...], out_dim: int) -> int | None:
    """The input dim a reshape carries unchanged to ``out_dim`` (same size, same number of
    elements before it), or None when the reshape splits or merges it."""
    before = math.prod(out_shape[:out_dim])
    for i, size in enumerate(in_shape):
        if size == out_shape[out_dim] and math.prod(in_shape[:i]) == before:
            return i
    return None


_SIZE_READS = {"size", "dim", "shape", "ndim", "numel", "dtype", "device", "is_cuda"}  # never the values


def reads_size(node: fx.Node) -> bool:
    """``x.shape``, ``x.size()``, ``x.device``...: a node that reads what a tensor is, never its values."""
    return node.target in _SIZE_READS or (node.target is getattr and node.args[1] in _SIZE_READS)


def size_read_from(entry: object) -> tuple[fx.Node, int] | None:
    """The tensor and dim a size argument was read from at run time (``x.shape[3]``,
    ``x.size(3)``, ``x.size()[3]``); None for a constant or any other expression."""
    if not isinstance(entry, fx.Node):
        return None
    if entry.op == "call_method" and entry.target == "size" and len(entry.args) == 2:
        tensor, dim = entry.args
        return (tensor, dim) if isinstance(tensor, fx.Node) and isinstance(dim, int) else None
    if entry.op != "call_function" or entry.target is not operator.getitem or not isinstance(entry.args[1], int):
        return None
    whole = entry.args[0]
    if not isinstance(whole, fx.Node) or not reads_shape(whole) or not isinstance(whole.args[0], fx.Node):
        return None
    return whole.args[0], entry.args[1]


def computed_from(node: fx.Node, stop: Callable[[fx.Node], bool] = lambda _: False) -> Iterator[fx.Node]:
    """``node`` and every node it is computed from, each once, depth first; the walk does not
    go past a node for which ``stop`` holds (that node is still given)."""
    pending, seen = [node], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        yield current
        if not stop(current):
            pending.extend(current.all_input_nodes)


def reads_shape(node: fx.Node) -> bool:
    """``x.shape`` or ``x.size()``: the whole tuple of sizes read from a tensor."""
    whole_size = node.op == "call_method" and node.target == "size" and len(node.args) == 1
    return whole_size or (node.op == "call_function" and node.target is getattr and str(node.args[1]) == "shape")


_SIZE_ARITHMETIC = {operator.floordiv, operator.mul, operator.truediv, operator.add, operator.sub, operator.mod}


def size_derived_from(entry: object) -> tuple[fx.Node, int] | None:
    """The tensor and dim a size argument is computed from with constants (VOLO's
    ``C // self.num_heads``): not equal to that dim, but changing with it."""
    read = size_read_from(entry)
    if read is not None or not isinstance(entry, fx.Node):
        return read
    if entry.op != "call_function" or entry.target not in _SIZE_ARITHMETIC:
        return None
    operands = [a for a in entry.args if isinstance(a, fx.Node)]
    return size_derived_from(operands[0]) if len(operands) == 1 else None
