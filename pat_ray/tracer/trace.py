"""Find the coupled output channels of a CNN by tracing it with torch.fx.

Removing output channel ``i`` of a conv is only legal if every tensor that carries that
channel loses it together: the BatchNorm after it, every consumer's input slice, every
other operand of a residual sum, a depthwise conv that follows it, an SE gate that scales
it. We find these sets by propagating a *layout* through the traced graph: for every
tensor, the ordered list of channel groups its dim 1 is made of. Elementwise ops between
tensors merge their groups (union-find), ``cat`` concatenates layouts, ``flatten`` turns
each channel into ``H*W`` features. Any op we do not understand stops the trace with an
error that names it: a silently wrong prune is worse than no prune.

This module walks the graph; what each op and layer does to channels is in ``ops/`` and
``layers/``, and the state they change in ``state.py``. One node is looked up in this order:
a module call by its class in the layer registry (a ``torch.nn`` layer in no family is kept
whole, unless its family ``follow``s it); a node reading a tuple of tensors by its target in the
op registry's ``tuple`` form, one returning several in its ``pieces`` form, any other in its
``tensor`` form. Three fallbacks follow, each safe by construction: an op with no rule that
returned its argument unchanged on the example passes its layout on; an op with no rule whose
traced inputs are all pinned gets new fixed channels; a layer fed only from the model's
buffers and parameters sees fixed channels.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch.fx as fx
from torch import nn

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.finalize import finalize
from pat_ray.tracer.fx_trace import trace_with_shapes
from pat_ray.tracer.graph import INPUT_GROUP_PREFIX, AttentionCut, Example, ModelGraph, check_attention, first_sample
from pat_ray.tracer.layers.table import (
    family_of,
    fixed_result,
    followed_result,
    kept_whole,
    kept_whole_result,
    trace_layer,
    trace_layer_pieces,
)
from pat_ray.tracer.layout import Layout, Traced
from pat_ray.tracer.nodes import (
    PRODUCT_MACS,
    RETURNED_ARGUMENT,
    computed_from,
    describe,
    is_parameter,
    piece_shapes,
    reads_size,
    shape_of,
)
from pat_ray.tracer.ops.call import OpCall
from pat_ray.tracer.ops.heads import check_head_counts
from pat_ray.tracer.ops.table import OPS, op_family
from pat_ray.tracer.state import GroupBuilder

Layouts = dict[fx.Node, Traced]  # what the tracer knows of every node seen so far


def trace_channel_groups(
    model: nn.Module,
    example_input: Example,
    exclude: Iterable[str] = (),
    attention: AttentionCut = "heads",
) -> ModelGraph:
    """Trace ``model`` and return its channel groups and cost terms.

    ``example_input``: one tensor, or a tuple with one tensor per argument of ``forward``.
    ``exclude`` names modules whose output channels must be kept (their groups are pinned).
    ``attention``: what a reshape that cuts channels into heads makes prunable: whole
    ``heads``, or ``head_dim`` (the same features of every head; see docs/attention.md).
    The model is traced in eval mode (stochastic depth and dropout become identities) and
    restored to its previous mode afterwards.
    """
    unknown = set(exclude) - {name for name, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"exclude names modules that do not exist: {sorted(unknown)}")
    check_attention(attention)
    recorded = trace_with_shapes(model, example_input)
    input_shape = tuple(first_sample(example_input)[0].shape)
    builder = GroupBuilder(model, frozenset(exclude), head_dim=attention == "head_dim")
    try:
        return finalize(_walk(recorded.graph, builder), input_shape, recorded, attention)
    except UnsupportedModelError as err:
        if not builder.heads:
            raise
        if builder.head_dim:
            warnings.warn(f"head_dim is kept whole: {err}", stacklevel=2)
    # Heads that some op cannot follow: traced again with every head kept whole, as a
    # reshape that cuts channels was traced before heads were (so heads never refuse a model).
    builder = _walk(recorded.graph, GroupBuilder(model, frozenset(exclude), split_heads=False))
    return finalize(builder, input_shape, recorded, attention)


def _walk(graph: fx.Graph, builder: GroupBuilder) -> GroupBuilder:
    """Visit every node in order; the builder then holds the groups, members and costs."""
    layouts: Layouts = {}
    for node in graph.nodes:
        layouts[node] = _visit(builder, node, layouts)
    _count_constant_parameters(builder, graph)
    check_head_counts(builder, graph)
    return builder


def _count_constant_parameters(builder: GroupBuilder, graph: fx.Graph) -> None:
    """Parameters the forward reads that no layer, channel slice or rule has counted (a
    relative position bias table gathered by an index): counted at their size, so the traced
    parameter count equals the model's."""
    counted = {term.module for term in builder.terms} | set(builder.params)
    for node in graph.nodes:
        target = str(node.target)
        if node.op != "get_attr" or target in counted or target.rpartition(".")[0] in counted:
            continue
        if is_parameter(builder.model, node):
            builder.count_fixed(target)
            counted.add(target)


def _tensor_layouts(args: Any, layouts: Layouts) -> list[Layout]:
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


def _visit(builder: GroupBuilder, node: fx.Node, layouts: Layouts) -> Traced:
    if node.op == "placeholder":
        shape = shape_of(node)
        if shape is None or len(shape) < 2:
            return None
        return builder.fixed_group(shape[1], f"{INPUT_GROUP_PREFIX}{node.name}>")
    if node.op == "output":
        for layout in _tensor_layouts(node.args, layouts):
            builder.pin(layout)
        return None
    if node.op == "get_attr":
        return None
    if node.op == "call_module" and kept_whole(builder.model.get_submodule(str(node.target))):
        followed = followed_result(builder, node, layouts)
        if followed is not None:
            return followed
        return kept_whole_result(builder, node, _tensor_layouts((node.args, node.kwargs), layouts))
    try:
        return _visit_op(builder, node, layouts, describe(node))
    except UnsupportedModelError:
        if not _reads_fixed_channels_only(builder, node, layouts):
            raise
        return fixed_result(builder, node)  # what flows in never changes, so neither does what comes out


def _reads_fixed_channels_only(builder: GroupBuilder, node: fx.Node, layouts: Layouts) -> bool:
    """A function or method (no weights of its own) whose traced inputs are all pinned: an LSTM's
    hidden state indexed on its first axis, a model input's channels sliced."""
    if node.op not in ("call_function", "call_method") or any(n.op == "get_attr" for n in node.all_input_nodes):
        return False
    inputs = _tensor_layouts((node.args, node.kwargs), layouts)
    return bool(inputs) and all(builder.is_pinned(layout) for layout in inputs)


def _visit_op(builder: GroupBuilder, node: fx.Node, layouts: Layouts, where: str) -> Traced:
    tuples = [n for n in node.all_input_nodes if isinstance(layouts.get(n), tuple)]
    if tuples:
        return _use_pieces(builder, node, tuples[0], layouts, where)
    family = op_family(node.op, node.target) if node.op in ("call_function", "call_method") else None
    inputs = _tensor_layouts((node.args, node.kwargs), layouts)
    if not inputs and node.op == "call_module" and _reads_indices(builder, node):
        return trace_layer(builder, node, Layout(()))  # token ids computed in the forward (BERT's type ids)
    if not inputs and (family is None or family.needs_input):
        constant = _constant_input(builder, node)
        if constant is not None:
            return trace_layer(builder, node, constant)
        if node.op == "call_module" and any(True for _ in builder.model.get_submodule(str(node.target)).parameters()):
            raise UnsupportedModelError(
                f"{where}: its input is a tensor whose channels pat_ray could not follow from the model's input"
            )
        return None  # no channel-carrying tensor flows in (shape arithmetic, constants)
    if piece_shapes(node) is not None:
        return _visit_multi_output(builder, node, inputs, layouts, where)
    shape = shape_of(node)
    result: Traced
    if node.op == "call_module":
        result = trace_layer(builder, node, inputs[0], others=_later_arguments(node, inputs[0], layouts))
    elif shape is None:
        return None  # a non-tensor result (size, shape, a python number)
    elif family is None and RETURNED_ARGUMENT in node.meta:  # returned its argument as is on the example
        builder.count_fixed_macs(node.name, node.meta.get(PRODUCT_MACS, 0))
        return layouts.get(node.meta[RETURNED_ARGUMENT])
    elif family is None:
        raise UnsupportedModelError(f"{where}: pat_ray does not know how this op treats channels")
    else:
        result = family.rule(builder, OpCall(node, inputs, shape, layouts, where))
    if (
        isinstance(result, Layout)
        and shape is not None
        and len(shape) > result.axis
        and builder.width(result) != shape[result.axis]
    ):
        raise UnsupportedModelError(  # a table entry whose channel semantics do not hold here
            f"{where}: its result has {shape[result.axis]} channels, but the channels traced into it add up to "
            f"{builder.width(result)}; pat_ray does not know how this op maps channels"
        )
    return result


def _reads_indices(builder: GroupBuilder, node: fx.Node) -> bool:
    family = family_of(builder.model.get_submodule(str(node.target)))
    return family is not None and family.reads_indices


def _later_arguments(node: fx.Node, first: Layout, layouts: Layouts) -> tuple[Layout | None, ...]:
    """The layouts of a module call's tensor arguments after the one ``first`` is of (None
    where the tracer follows no channels): a layer with two inputs (``nn.Bilinear``) sees both."""
    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    traced = [layouts.get(a) for a in tensors]
    at = next((i for i, t in enumerate(traced) if t is first), None)
    if at is None:
        return ()
    return tuple(t if isinstance(t, Layout) else None for t in traced[at + 1 :])


def _constant_input(builder: GroupBuilder, node: fx.Node) -> Layout | None:
    """A layer applied to a tensor computed from the model's buffers and parameters alone (Swin
    V2's position-bias MLP on its coordinate table), or from the input's size alone (ConViT's
    relative positions of its patch grid): that tensor's channels are fixed, like a model
    input's, and a later op meeting it keeps them so (Perceiver's latents, normalized here and
    added to the residual stream there, are not sliced with that stream); None when ``node`` is
    no such call, or a parameter it is made from was sliced with channels already."""
    source = node.args[0] if node.op == "call_module" and node.args else None
    shape = shape_of(source)
    if not isinstance(source, fx.Node) or shape is None or len(shape) < 2:
        return None
    made_of: set[str] = set()
    for current in computed_from(source, stop=reads_size):  # the input's size, not its values (ConViT's grid)
        if current.op == "placeholder" or (current.op == "get_attr" and str(current.target) in builder.params):
            return None
        if current.op == "get_attr":
            made_of.add(str(current.target))
    builder.read_as_fixed(made_of)
    return builder.fixed_group(shape[1], f"<{source.name}>")


def _visit_multi_output(
    builder: GroupBuilder, node: fx.Node, inputs: list[Layout], layouts: Layouts, where: str
) -> Traced:
    """An op that returns several tensors: its rule of form ``pieces`` gives each one's layout
    (a layer's family, for a module call)."""
    if node.op == "call_module":
        pieces = trace_layer_pieces(builder, node, inputs[0])
        if pieces is not None:
            return pieces
    family = op_family(node.op, node.target, form="pieces")
    if family is None:
        raise UnsupportedModelError(
            f"{where}: returns several tensors and pat_ray does not know how their channels relate to "
            f"its input's; supported: {', '.join(OPS.names('pieces'))}"
        )
    return family.rule(builder, OpCall(node, inputs, (), layouts, where))


def _use_pieces(builder: GroupBuilder, node: fx.Node, source: fx.Node, layouts: Layouts, where: str) -> Traced:
    """A node that reads a whole tuple of tensors (indexing it, concatenating it): its rule of
    form ``tuple``, given the tuple as its first argument."""
    family = op_family(node.op, node.target, form="tuple")
    if family is None or not node.args or node.args[0] is not source:
        raise UnsupportedModelError(
            f"{where}: takes the tuple of tensors {source.name!r} returns; pat_ray follows such tuples only "
            f"through {', '.join(OPS.names('tuple'))} (indexing: also .values / .indices)"
        )
    return family.rule(builder, OpCall(node, [], (), layouts, where))
