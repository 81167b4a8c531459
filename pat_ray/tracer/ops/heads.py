"""Reshapes that cut the channel axis into attention heads, and merge heads back.

``qkv(x).reshape(B, N, 3, heads, head_dim)`` cuts a projection's channels into heads: head
``h`` is ``head_dim`` consecutive channels of each of q, k and v. Removing a whole head
(those slices of q, k and v, and the out projection's matching inputs) leaves every dot
product of the other heads as it was, so the tracer makes the heads one group (a channel per
head, ``GroupBuilder.cut_into_heads``) and follows it on the heads axis through the products
and softmax. ``out.transpose(1, 2).reshape(B, N, heads * head_dim)`` merges the heads axis
with the one after it: each head then fills ``head_dim`` consecutive positions (a layout's
``repeat``), which is how the out projection's input columns hold them.

Where the code writes the head count as a number, that number comes from a module attribute
(``self.num_heads``, timm's ``self.attn_dim``): the tracer finds it (the one int attribute of
the module running the reshape with that value) so that surgery can set it to the new count;
without one the heads stay whole.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx

from pat_ray.tracer.nodes import describe, size_arguments
from pat_ray.tracer.state import AttributeSlot, GroupBuilder, HeadsConflict, Layout

# Words in an attribute's name that say it holds a head's width, not a head count; used only
# to choose between several attributes with the same value.
_WIDTH_WORDS = ("dim", "width", "size", "channel")


def cut_heads(
    builder: GroupBuilder, node: fx.Node, layout: Layout, shapes: tuple[tuple[int, ...], tuple[int, ...]]
) -> Layout | None:
    """The heads layout of a reshape that splits the channel axis into (..., heads, head_dim),
    or None if it is no such reshape (or the channels cannot be cut so)."""
    in_shape, out_shape = shapes
    found = _split_factors(in_shape, out_shape, layout.axis)
    if found is None:
        return None
    first, count = found
    heads_axis = first + count - 2
    heads, head_dim = out_shape[heads_axis], out_shape[heads_axis + 1]
    cut = builder.cut_into_heads(layout, heads, head_dim, f"{builder.labels[layout.groups[0]]}/heads", node.name)
    if cut is None:
        return None
    builder.head_reshapes.add(node.name)
    builder.head_counts.add((_owning_module(node), heads))
    return Layout(cut.groups, 1, heads_axis)


def merged_layout(
    builder: GroupBuilder, node: fx.Node, layout: Layout, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> Layout | None:
    """A reshape that merges the heads axis with the axes after it ((B, N, heads, head_dim) ->
    (B, N, heads * head_dim)): each head then fills that many consecutive positions. Only heads
    are followed so (other channels merged with a spatial axis are kept whole, as before)."""
    if not set(builder.leaves(layout).groups) <= _head_groups(builder):
        return None
    axis = layout.axis
    before = math.prod(in_shape[:axis])
    for j in range(1, len(out_shape)):
        if math.prod(out_shape[:j]) != before:
            continue
        for end in range(axis + 2, len(in_shape) + 1):
            merged = math.prod(in_shape[axis:end])
            if out_shape[j] == merged and math.prod(out_shape[j + 1 :]) == math.prod(in_shape[end:]):
                builder.head_reshapes.add(node.name)
                return Layout(layout.groups, layout.repeat * merged // in_shape[axis], j)
    return None


def written_by_attribute(builder: GroupBuilder, node: fx.Node, result: Layout) -> bool:
    """Whether the number a reshape writes for ``result``'s heads axis is a module attribute
    that surgery can set; if so it is recorded. Only head groups are followed so."""
    leaves = builder.leaves(result).groups
    if len(leaves) != 1 or leaves[0] not in _head_groups(builder):
        return False
    written = size_arguments(node, 1, "shape", "size")
    value = written[result.axis] if isinstance(written, list | tuple) and result.axis < len(written) else None
    owner = _owning_module(node)
    if not isinstance(value, int):
        return False
    attribute = _attribute_with_value(builder, owner, value)
    if attribute is None:
        return False
    builder.attributes.append(AttributeSlot(owner, attribute, leaves[0], result.repeat))
    builder.head_counts.add((owner, value))
    return True


def check_head_counts(builder: GroupBuilder, graph: fx.Graph) -> None:
    """Pruning heads changes the head count (and the merged width) a module's forward writes:
    a size computed from either anywhere else in that forward (VOLO's ``C // self.num_heads``
    for another tensor) would not follow, so heads are kept whole there (HeadsConflict)."""
    if not builder.head_counts:
        return
    for node in graph.nodes:
        if node.name in builder.head_reshapes or not _computes_sizes(node):
            continue
        owner, numbers = _owning_module(node), set(_int_leaves((node.args, node.kwargs)))
        for module, count in builder.head_counts:
            if module == owner and count in numbers:
                raise HeadsConflict(f"{describe(node)}: computes a size from {count}, a number pruning heads changes")


# Ops whose int arguments are sizes (not dims): a number pruning heads changes must not be among them.
_SIZE_METHODS = {"view", "reshape", "expand", "repeat", "new_zeros", "new_ones", "new_empty", "new_full"}
_SIZE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
    torch.reshape, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange,
}  # fmt: skip


def _computes_sizes(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _SIZE_METHODS
    return node.op == "call_function" and node.target in _SIZE_FUNCTIONS


def _int_leaves(value: object) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list | tuple):
        return [n for item in value for n in _int_leaves(item)]
    if isinstance(value, dict):
        return [n for item in value.values() for n in _int_leaves(item)]
    return []


def _head_groups(builder: GroupBuilder) -> set[int]:
    return {builder.find(h.group) for h in builder.heads.values()}


def _split_factors(in_shape: tuple[int, ...], out_shape: tuple[int, ...], axis: int) -> tuple[int, int] | None:
    """(first, count): ``out_shape[first:first + count]`` (two or more dims) is ``in_shape[axis]``
    split, every other dim unchanged in its place."""
    before, after = math.prod(in_shape[:axis]), math.prod(in_shape[axis + 1 :])
    for first in range(1, len(out_shape)):
        if math.prod(out_shape[:first]) != before:
            continue
        for count in range(2, len(out_shape) - first + 1):
            split = out_shape[first : first + count]
            if math.prod(split) == in_shape[axis] and math.prod(out_shape[first + count :]) == after:
                return first, count
    return None


def _owning_module(node: fx.Node) -> str:
    """The module whose forward runs ``node`` (the innermost on fx's module stack; none: the
    model's own forward, named ``""``)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    key, value = list(stack.items())[-1]
    return str(value[0]) if isinstance(value, tuple) else str(key)


def _attribute_with_value(builder: GroupBuilder, owner: str, value: int) -> str | None:
    """The one int attribute of ``owner`` equal to ``value`` (among several, the one whose name
    does not say it is a width); None if there is no such single attribute."""
    module = builder.model.get_submodule(owner)
    found = [
        name
        for name, held in vars(module).items()
        if not name.startswith("_") and isinstance(held, int) and not isinstance(held, bool) and held == value
    ]
    if len(found) > 1:
        found = [name for name in found if not any(word in name.lower() for word in _WIDTH_WORDS)]
    return found[0] if len(found) == 1 else None
