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

import operator
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from pat_ray.core.contractions import einsum_layout, matmul_layout
from pat_ray.core.functional_layers import functional_layer
from pat_ray.core.fx_trace import PieceShape, piece_shapes, shape_of, trace_with_shapes
from pat_ray.core.graph import (
    INPUT_GROUP_PREFIX,
    ChannelGroup,
    ComputeTerm,
    Example,
    Member,
    ModelGraph,
    UnsupportedModelError,
    first_sample,
)
from pat_ray.core.layout import GroupBuilder, Layout, Pieces, Traced
from pat_ray.core.module_rules import fresh_result, kept_whole, layer_norm_layout, opaque_result, visit_module
from pat_ray.core.reductions import INDEXED_FUNCTIONS, INDEXED_METHODS, indexed_pieces, reduce_layout
from pat_ray.core.tensor_ops import (
    binary_layout,
    cat_layout,
    created_layout,
    getitem_layout,
    known_shape,
    pad_layout,
    permute_layout,
    reordered_layout,
    repeat_layout,
    reshape_layout,
    shift_layout,
    size_written_in_code,
    stack_layout,
)
from pat_ray.core.tracing_ops import CAT_FUNCTIONS, MULTI_OUTPUT_FUNCTIONS, MULTI_OUTPUT_METHODS, op_kind
from pat_ray.core.tuples import pick, split_layout


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
    graph, output_shapes = trace_with_shapes(model, example_input)
    builder = GroupBuilder(model=model, excluded=frozenset(exclude))
    unknown = builder.excluded - {name for name, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"exclude names modules that do not exist: {sorted(unknown)}")
    layouts: dict[fx.Node, Traced] = {}
    for node in graph.nodes:
        layouts[node] = _visit(builder, node, layouts)
    return _finalize(builder, tuple(first_sample(example_input)[0].shape), output_shapes)


def _tensor_layouts(args: Any, layouts: dict[fx.Node, Traced]) -> list[Layout]:
    """The layouts of the tensors in ``args``, each piece of a tuple result included."""
    found: list[Layout] = []

    def add(traced: Traced) -> None:
        if isinstance(traced, tuple):
            for piece in traced:
                add(piece)
        elif traced is not None:
            found.append(traced)

    fx.node.map_arg(args, lambda n: add(layouts.get(n)))
    return found


def _where(node: fx.Node) -> str:
    return f"node {node.name!r} ({node.op} {getattr(node.target, '__name__', node.target)})"


def _visit(b: GroupBuilder, node: fx.Node, layouts: dict[fx.Node, Traced]) -> Traced:
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
    if node.op == "call_module" and kept_whole(b.model.get_submodule(str(node.target))):
        return opaque_result(b, node, _tensor_layouts((node.args, node.kwargs), layouts))
    try:
        return _visit_op(b, node, layouts, where)
    except UnsupportedModelError:
        if not _reads_fixed_channels_only(b, node, layouts):
            raise
        return fresh_result(b, node)  # what flows in never changes, so neither does what comes out


def _reads_fixed_channels_only(b: GroupBuilder, node: fx.Node, layouts: dict[fx.Node, Traced]) -> bool:
    """A function or method (no weights of its own) whose traced inputs are all pinned: an LSTM's
    hidden state indexed on its first axis, a model input's channels sliced."""
    if node.op not in ("call_function", "call_method") or any(n.op == "get_attr" for n in node.all_input_nodes):
        return False
    inputs = _tensor_layouts((node.args, node.kwargs), layouts)
    return bool(inputs) and all(b.is_pinned(layout) for layout in inputs)


def _visit_op(b: GroupBuilder, node: fx.Node, layouts: dict[fx.Node, Traced], where: str) -> Traced:
    shape = shape_of(node)
    tuples = [n for n in node.all_input_nodes if isinstance(layouts.get(n), tuple)]
    if tuples:
        return _use_pieces(b, node, tuples[0], layouts, where)
    if node.op in ("call_function", "call_method") and op_kind(node.op, node.target) == "create":
        return created_layout(b, node, shape) if shape is not None else None
    inputs = _tensor_layouts((node.args, node.kwargs), layouts)
    if not inputs:
        if node.op == "call_module" and any(True for _ in b.model.get_submodule(str(node.target)).parameters()):
            raise UnsupportedModelError(
                f"{where}: its input is a tensor whose channels pat_ray could not follow from the model's input"
            )
        return None  # no channel-carrying tensor flows in (shape arithmetic, constants)
    pieces = piece_shapes(node)
    if pieces is not None:
        return _visit_multi_output(b, node, inputs[0], pieces, where)
    if node.op == "call_module":
        result = visit_module(b, node, inputs[0])
    else:
        result = _visit_function(b, node, inputs, shape, layouts)
    if (
        isinstance(result, Layout)
        and shape is not None
        and len(shape) > result.axis
        and b.width(result) != shape[result.axis]
    ):
        raise UnsupportedModelError(  # a table entry whose channel semantics do not hold here
            f"{where}: its result has {shape[result.axis]} channels, but the channels traced into it add up to "
            f"{b.width(result)}; pat_ray does not know how this op maps channels"
        )
    return result


def _visit_multi_output(b: GroupBuilder, node: fx.Node, layout: Layout, nested: list[PieceShape], where: str) -> Pieces:
    pieces = [p if isinstance(p, tuple) else None for p in nested]  # these ops return flat tuples
    indexed: set[Any] = INDEXED_METHODS if node.op == "call_method" else INDEXED_FUNCTIONS
    if node.op in ("call_method", "call_function") and node.target in indexed:
        return indexed_pieces(b, node, layout, pieces, where)
    table: dict[Any, int] = MULTI_OUTPUT_METHODS if node.op == "call_method" else MULTI_OUTPUT_FUNCTIONS
    dim_position = table.get(node.target) if node.op in ("call_method", "call_function") else None
    first = node.args[0] if node.args else None
    in_shape = shape_of(first)
    if dim_position is None or in_shape is None:
        raise UnsupportedModelError(
            f"{where}: returns several tensors and pat_ray does not know how their channels relate to "
            "its input's; supported: split, chunk, unbind, tensor_split, and (values, indices) along a dim "
            "(max, min, median, mode, kthvalue, topk, sort, cummax, cummin)"
        )
    return split_layout(b, node, layout, dim_position, in_shape, pieces, where)


def _use_pieces(b: GroupBuilder, node: fx.Node, source: fx.Node, layouts: dict[fx.Node, Traced], where: str) -> Traced:
    """A node that consumes a whole tuple of tensors: indexing it, or concatenating it."""
    pieces = layouts[source]
    assert isinstance(pieces, tuple), "only a multi-output node's layouts are pieces"
    if node.op == "call_function" and node.target in (operator.getitem, getattr) and node.args[0] is source:
        return pick(node, pieces, where)
    if node.op == "call_function" and node.target in CAT_FUNCTIONS and node.args[0] is source:
        return cat_layout(b, node, layouts, where)
    if node.op == "call_function" and node.target is torch.stack and node.args[0] is source:
        return stack_layout(b, node, layouts, where)
    raise UnsupportedModelError(
        f"{where}: takes the tuple of tensors {source.name!r} returns; "
        "pat_ray follows such tuples only through indexing (or .values / .indices), cat and stack"
    )


def _visit_function(
    b: GroupBuilder,
    node: fx.Node,
    inputs: list[Layout],
    shape: tuple[int, ...] | None,
    layouts: dict[fx.Node, Traced],
) -> Layout | None:
    where = _where(node)
    if shape is None:
        return None  # a non-tensor result (size, shape, a python number)
    traced = layouts.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
    first = traced if isinstance(traced, Layout) else None  # a tuple's pieces are used in _use_pieces
    kind = op_kind(node.op, node.target)
    if kind == "minmax":  # max(x, other) is element-wise; max(x) reduces (max(x, dim) is a tuple)
        kind = "binary" if sum(shape_of(a) is not None for a in node.all_input_nodes) > 1 else "reduce"
    if kind == "binary":
        return binary_layout(b, node, shape, layouts, where)
    if kind == "matmul":
        return matmul_layout(b, node, shape, layouts, where)
    if kind == "einsum":
        return einsum_layout(b, node, shape, layouts, where)
    if kind == "layer" and first is not None:
        return functional_layer(b, node, first, where)
    if kind == "sample" and first is not None:  # grid_sample: moves pixels; the grid must not shrink
        grid = layouts.get(node.kwargs.get("grid", node.args[1] if len(node.args) > 1 else None))  # type: ignore[arg-type]
        if isinstance(grid, Layout) and not b.is_pinned(grid):
            raise UnsupportedModelError(f"{where}: its sampling grid carries prunable channels")
        return first.on_dim1(where)
    if kind == "cat":
        return cat_layout(b, node, layouts, where)
    if kind == "stack":
        return stack_layout(b, node, layouts, where)
    if kind == "softmax":
        b.pin(inputs[0])
        return inputs[0]
    if kind == "getitem" and first is None:
        return None  # indexing a python container of tensors is handled via cat/args
    rule = _ON_ONE_LAYOUT.get(kind or "")
    if rule is None or first is None:
        raise UnsupportedModelError(f"{where}: pat_ray does not know how this op treats channels")
    return rule(b, node, first, shape, where)


OneLayoutRule = Callable[[GroupBuilder, fx.Node, Layout, tuple[int, ...], str], Layout | None]
_ON_ONE_LAYOUT: dict[str, OneLayoutRule] = {  # op kind -> how its one traced input's layout maps
    "pass": lambda b, node, layout, shape, where: _unary(b, node, layout, where),
    "reshape": lambda b, node, layout, shape, where: reshape_layout(b, node, layout, where),
    "axes": lambda b, node, layout, shape, where: reshape_layout(b, node, layout, where),
    "reduce": reduce_layout,
    "norm": lambda b, node, layout, shape, where: reduce_layout(b, node, layout, shape, where, dim_position=2),
    "shift": lambda b, node, layout, shape, where: shift_layout(b, node, layout, where),
    "repeat": lambda b, node, layout, shape, where: repeat_layout(node, layout, where),
    "permute": lambda b, node, layout, shape, where: permute_layout(node, layout, where),
    "reorder": lambda b, node, layout, shape, where: reordered_layout(b, node, layout, where),
    "pad": lambda b, node, layout, shape, where: pad_layout(b, node, layout, where),
    "getitem": lambda b, node, layout, shape, where: getitem_layout(node, layout, where),
    "layer_norm": lambda b, node, layout, shape, where: _functional_layer_norm(b, node, layout, where),
}


def _unary(b: GroupBuilder, node: fx.Node, layout: Layout, where: str) -> Layout:
    """An op applied to each element alone: any other tensor among its arguments (a clamp's
    bounds, say) would need slicing with the channels, which a pass-through does not do."""
    extra = [a for a in node.all_input_nodes[1:] if shape_of(a) is not None]
    if extra and node.target not in ("type_as", "to"):  # these read only the other's dtype / device
        raise UnsupportedModelError(f"{where}: takes tensor {extra[0].name!r} besides its input")
    if size_written_in_code(b, node, layout.axis):
        b.pin(layout)  # ``gate.expand(n, 64, h, w)``
    return layout


def _functional_layer_norm(b: GroupBuilder, node: fx.Node, layout: Layout, where: str) -> Layout:
    """``F.layer_norm(x, shape, weight, bias)`` as called inside a LayerNorm subclass's forward
    (torchvision's LayerNorm2d): the module owning ``weight`` is the one to resize."""
    args = dict(zip(("input", "normalized_shape", "weight", "bias"), node.args)) | dict(node.kwargs)
    params = [
        str(a.target) for a in (args.get("weight"), args.get("bias")) if isinstance(a, fx.Node) and a.op == "get_attr"
    ]
    owner = params[0].rpartition(".")[0] if params else None
    if owner is not None and not isinstance(b.model.get_submodule(owner), nn.LayerNorm):
        owner = None  # its normalized_shape lives in code pat_ray cannot change
    in_shape = known_shape(node.args[0], where)
    return layer_norm_layout(b, owner, params, layout, in_shape, args.get("normalized_shape"), where)


def _finalize(b: GroupBuilder, input_shape: tuple[int, ...], output_shapes: tuple[tuple[int, ...], ...]) -> ModelGraph:
    members: dict[int, list[Member]] = {}
    slots = list(b.slots)
    slots += [(target, "param", layout, axis) for target, (axis, layout) in b.params.items()]
    for module, role, layout, axis in slots:
        offset = 0
        for root in b.leaves(layout).groups:
            members.setdefault(root, []).append(Member(module, role, offset, layout.repeat, axis))
            offset += b.sizes[root] * layout.repeat
    roots = sorted({b.find(g) for g in range(len(b.parent))} - set(b.children))
    names: dict[int, str] = {}
    taken: set[str] = set()
    for r in roots:  # labels are unique by construction; a repeat must still not merge two groups
        names[r] = b.labels[r] if b.labels[r] not in taken else f"{b.labels[r]}#{r}"
        taken.add(names[r])
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
            out_groups=tuple(names[g] for g in b.leaves(out).groups),
            in_groups=tuple(names[g] for g in b.leaves(inp).groups) if inp else (),
            in_repeat=inp.repeat if inp else 1,
            in_divisor=divisor,
            macs_per_pair=macs,
            params_per_pair=params,
            params_per_out=per_out,
            is_layer=module not in b.untimed,
        )
        for module, out, inp, divisor, macs, params, per_out in b.raw_terms
    )
    return ModelGraph(groups=tuple(groups), terms=terms, input_shape=input_shape, output_shapes=output_shapes)
