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

With ``attention="head_dim"`` the same cut makes the other structure prunable: feature ``d``
of every head is one channel (the group is followed on the head_dim axis, the heads axis
stays), q's and k's coupled by their product, v's with the out projection's columns, which
the merge back lays out every ``head_dim`` positions. The number written is then
``self.head_dim``; a scale computed from it in the forward would change with it, so there
the features stay whole (``_check_scale``).
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from pat_ray.tracer.layout import AttributeSlot, Layout
from pat_ray.tracer.nodes import arg, describe, size_arguments
from pat_ray.tracer.state import GroupBuilder, HeadsConflict

HEADS_SUFFIX, HEAD_DIM_SUFFIX = "/heads", "/head_dim"  # end the names of the groups a cut makes

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
    by_features = builder.head_dim or _weighted_across(node, heads_axis, len(out_shape))
    suffix = HEAD_DIM_SUFFIX if by_features else HEADS_SUFFIX
    label = f"{builder.labels[layout.groups[0]]}{suffix}"
    cut = builder.cut_into_heads(layout, heads, head_dim, label, node.name, by_features=by_features)
    if cut is None:
        return None
    builder.note_head_reshape(node.name)
    builder.note_head_count(_owning_module(node), head_dim if by_features else heads, by_features)
    return Layout(cut.groups, 1, heads_axis + 1 if by_features else heads_axis)


def _weighted_across(node: fx.Node, heads_axis: int, rank: int) -> bool:
    """Whether the cut's result is softmaxed across its "heads" at once: SKNet's attention over
    kernel paths, ``view(B, paths, C, H, W).softmax(1)``, weighs the paths against each other,
    so no path could ever go alone; what can go is channel ``c`` of every path (as head_dim)."""
    for user in node.users:
        is_softmax = (user.op == "call_method" and user.target == "softmax") or (
            user.op == "call_function" and user.target in (torch.softmax, F.softmax)
        )
        dim = arg(user, 1, "dim") if is_softmax else None
        if isinstance(dim, int) and dim % rank == heads_axis:
            return True
    return False


def merged_layout(
    builder: GroupBuilder, node: fx.Node, layout: Layout, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> Layout | None:
    """A reshape that merges the heads axis with the axes after it ((B, N, heads, head_dim) ->
    (B, N, heads * head_dim)): each head then fills that many consecutive positions. Only heads
    are followed so (other channels merged with a spatial axis are kept whole, as before)."""
    if not set(builder.leaves(layout).groups) <= head_groups(builder):
        return None
    if builder.head_dim or builder.cut_by_features(layout):
        return _merged_features(builder, node, layout, in_shape, out_shape)
    axis = layout.axis
    before = math.prod(in_shape[:axis])
    for j in range(1, len(out_shape)):
        if math.prod(out_shape[:j]) != before:
            continue
        for end in range(axis + 2, len(in_shape) + 1):
            merged = math.prod(in_shape[axis:end])
            if out_shape[j] == merged and math.prod(out_shape[j + 1 :]) == math.prod(in_shape[end:]):
                builder.note_head_reshape(node.name)
                return Layout(layout.groups, layout.repeat * merged // in_shape[axis], j)
    return None


def _merged_features(
    builder: GroupBuilder, node: fx.Node, layout: Layout, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> Layout | None:
    """With head_dim pruned, a reshape that merges the heads axes before the features axis
    ((B, N, heads, head_dim) -> (B, N, heads * head_dim)): the result is a new group in which
    feature ``d`` sits at ``d`` of every head, as in the out projection's input columns."""
    axis, after = layout.axis, math.prod(in_shape[layout.axis + 1 :])
    if layout.repeat != 1:
        return None
    for start in range(1, axis):
        width = math.prod(in_shape[start : axis + 1])
        for j in range(1, len(out_shape)):
            fits = math.prod(out_shape[:j]) == math.prod(in_shape[:start]) and out_shape[j] == width
            if fits and math.prod(out_shape[j + 1 :]) == after:
                merged = builder.new_group(width, f"<{node.name}>")
                features = builder.tile(merged, in_shape[axis], 1, f"<{node.name}>{HEAD_DIM_SUFFIX}", node.name)
                builder.unify(features, Layout(layout.groups), node.name)
                builder.note_head_reshape(node.name)
                return Layout(merged.groups, 1, j)
    return None


def written_by_attribute(builder: GroupBuilder, node: fx.Node, result: Layout) -> bool:
    """Whether the number a reshape writes for ``result``'s heads (or head_dim) axis is a module
    attribute that surgery can set; if so it is recorded. Only head groups and the merged
    features of heads are followed so."""
    leaves = builder.leaves(result).groups
    if len(leaves) != 1:
        return False
    if leaves[0] in head_groups(builder):
        group, per_channel = leaves[0], result.repeat
    elif leaves[0] in builder.heads:  # head features merged (head_dim pruned): heads x features
        group, per_channel = builder.find(builder.heads[leaves[0]].group), builder.head_unit(leaves[0])
    else:
        return False
    written = size_arguments(node, 1, "shape", "size")
    value = written[result.axis] if isinstance(written, list | tuple) and result.axis < len(written) else None
    owner = _owning_module(node)
    if not isinstance(value, int):
        return False
    width = (builder.head_dim or builder.cut_by_features(Layout((group,)))) and per_channel == 1  # a head's width
    attribute = _attribute_with_value(builder, owner, value, width)
    if attribute is None:
        return False
    builder.add_size_attribute(AttributeSlot(owner, attribute, group, per_channel))
    builder.note_head_count(owner, value)
    return True


def check_head_counts(builder: GroupBuilder, graph: fx.Graph) -> None:
    """Pruning heads changes the head count (and the merged width) a module's forward writes:
    a size computed from either anywhere else in that forward (VOLO's ``C // self.num_heads``
    for another tensor) would not follow, so heads are kept whole there (HeadsConflict)."""
    head_counts, head_reshapes = builder.head_counts, builder.head_reshapes
    if not head_counts:
        return
    for node in graph.nodes:
        if node.name in head_reshapes or not node.users:  # unused: a size tuple a view was given unpacked
            continue
        owner = _owning_module(node)
        counts = [count for module, count in head_counts if module == owner]
        numbers = set(_numbers((node.args, node.kwargs), int)) if _computes_sizes(node) else set()
        for count in counts:
            if count in numbers:
                raise HeadsConflict(f"{describe(node)}: computes a size from {count}, a number pruning heads changes")
        if counts and (builder.head_dim or owner in builder.feature_cut_modules):
            _check_scale(builder.model.get_submodule(owner), node, counts)


def _check_scale(module: nn.Module, node: fx.Node, widths: list[int]) -> None:
    """Attention scaled by ``head_dim ** -0.5`` computed in the forward would change with the
    pruned width (so would the zeroed features' share of every dot product): a float equal to
    a width's root or its inverse is fine only as a module attribute set once (timm's
    ``self.scale``), which surgery leaves as it is."""
    held = [value for value in vars(module).values() if isinstance(value, float)]
    for number in _numbers((node.args, node.kwargs), float):
        for width in widths:
            roots = (width**0.5, width**-0.5)
            if any(math.isclose(number, root) for root in roots) and not any(math.isclose(number, h) for h in held):
                raise HeadsConflict(
                    f"{describe(node)}: scales by {number:.6g}, the root of {width}, a width pruning head_dim changes; "
                    "store the scale as a module attribute (self.scale = head_dim ** -0.5) to prune head_dim"
                )


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


def _numbers(value: object, kind: type[int] | type[float]) -> list:
    """The numbers of ``kind`` among an fx node's arguments (nested lists, tuples and dicts)."""
    if isinstance(value, kind) and not isinstance(value, bool):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [n for item in value for n in _numbers(item, kind)] if isinstance(value, list | tuple) else []


def head_groups(builder: GroupBuilder) -> set[int]:
    """The groups of one channel per head (the heads themselves, not the channels cut into them)."""
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


def _attribute_with_value(builder: GroupBuilder, owner: str, value: int, width: bool = False) -> str | None:
    """The one int attribute of ``owner`` equal to ``value`` (among several, the one whose name
    says it is a width if ``width``, else the one whose name does not); None if there is no
    such single attribute."""
    module = builder.model.get_submodule(owner)
    found = [
        name
        for name, held in vars(module).items()
        if not name.startswith("_") and isinstance(held, int) and not isinstance(held, bool) and held == value
    ]
    if len(found) > 1:
        found = [name for name in found if any(word in name.lower() for word in _WIDTH_WORDS) == width]
    return found[0] if len(found) == 1 else None
