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

import torch.fx as fx

from pat_ray.tracer.nodes import size_arguments
from pat_ray.tracer.state import AttributeSlot, GroupBuilder, Layout

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
    return None if cut is None else Layout(cut.groups, 1, heads_axis)


def merged_layout(
    builder: GroupBuilder, layout: Layout, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
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
    return True


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
