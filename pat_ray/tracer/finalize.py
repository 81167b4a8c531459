"""Turn the builder's provisional groups, slots and terms into the ``ModelGraph``.

Group ids become names, slots become members at their offsets, and terms name the groups
they count. A group cut into attention heads (``GroupBuilder.heads``) is not a group of its
own: its members join the head group, each head being ``head_dim`` consecutive channels in
every piece (q, k and v of a fused projection), and the costs it takes part in count
``pieces * head_dim`` channels per kept head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.graph import AttentionCut, ChannelGroup, ComputeTerm, Member, ModelGraph, SizeAttribute
from pat_ray.tracer.layout import Layout, Slot, Term
from pat_ray.tracer.state import GroupBuilder, HeadsConflict

if TYPE_CHECKING:
    from pat_ray.tracer.shape_record import Recorded


def finalize(
    builder: GroupBuilder,
    input_shape: tuple[int, ...],
    recorded: Recorded,
    attention: AttentionCut = "heads",
) -> ModelGraph:
    """The graph the builder's state describes, once every node is seen; ``attention``: the cut
    the trace was asked for (kept when heads fell back to whole)."""
    names = _group_names(builder)
    members: dict[int, list[Member]] = {}
    for slot in [*builder.slots, *builder.params.values()]:
        for root, member in _slot_members(builder, slot):
            members.setdefault(root, []).append(member)
    pinned = {builder.find(h.group) for g, h in builder.heads.items() if builder.find(g) in builder.pinned}
    groups = []
    for root, name in names.items():
        sub = builder.subgroups_of(root) or 1
        if builder.sizes[root] % sub:
            raise UnsupportedModelError(f"group {name!r}: size not divisible by groups")
        groups.append(
            ChannelGroup(
                name=name,
                size=builder.sizes[root],
                members=tuple(members.get(root, ())),
                pinned=root in builder.pinned or root in pinned or not members.get(root),
                subgroups=sub,
            )
        )
    terms = tuple(_compute_term(builder, names, term) for term in builder.terms)
    attributes = tuple(
        SizeAttribute(a.module, a.attribute, names[builder.find(a.group)], a.per_channel)
        for a in builder.size_attributes
    )
    return ModelGraph(
        tuple(groups), terms, input_shape, recorded.output_shapes, attributes, attention, recorded.shapes_from_values
    )


def _slot_members(builder: GroupBuilder, slot: Slot) -> list[tuple[int, Member]]:
    """The members a slot makes, with the root of the group each belongs to."""
    found, offset, repeat = [], 0, slot.layout.repeat
    for root in builder.leaves(slot.layout).groups:
        heads = builder.heads.get(root)
        if heads is None:
            found.append((root, Member(slot.module, slot.role, offset, repeat, slot.axis, slot.input)))
        else:  # each piece of the group holds every head once
            piece = builder.sizes[heads.group] * heads.head_dim * repeat
            found.extend(
                (
                    builder.find(heads.group),
                    Member(slot.module, slot.role, offset + p * piece, repeat * heads.head_dim, slot.axis, slot.input),
                )
                for p in range(heads.pieces)
            )
        offset += builder.sizes[root] * repeat
    return found


def _compute_term(builder: GroupBuilder, names: dict[int, str], term: Term) -> ComputeTerm:
    out_groups, out_unit = _named(builder, names, term.out, term.module)
    in_groups, in_unit = _named(builder, names, term.inp, term.module) if term.inp else ((), 1)
    factor_groups, factor_unit = _named(builder, names, term.factor, term.module) if term.factor else ((), 1)
    return ComputeTerm(
        module=term.module,
        out_groups=out_groups,
        in_groups=in_groups,
        in_repeat=(term.inp.repeat if term.inp else 1) * in_unit,
        in_divisor=term.in_divisor,
        macs_per_pair=term.macs_per_pair,
        params_per_pair=term.params_per_pair,
        params_per_out=term.params_per_out,
        is_layer=term.is_layer,
        out_repeat=out_unit,
        product=term.product,
        factor_groups=factor_groups,
        factor_repeat=(term.factor.repeat if term.factor else 1) * factor_unit,
    )


def _named(builder: GroupBuilder, names: dict[int, str], layout: Layout, where: str) -> tuple[tuple[str, ...], int]:
    """The names of the groups a layout counts in, and the layer's channels per group channel
    (one unit for all: a cost term's width is one count times one repeat)."""
    roots = [
        (builder.find(builder.heads[g].group), builder.head_unit(g)) if g in builder.heads else (g, 1)
        for g in builder.leaves(layout).groups
    ]
    units = {unit for _, unit in roots}
    if len(units) > 1:
        raise HeadsConflict(f"{where}: counts channels cut into heads together with others")
    return tuple(names[root] for root, _ in roots), units.pop() if units else 1


def _group_names(builder: GroupBuilder) -> dict[int, str]:
    """Every final group's name, by root id in graph order: its label (unique by construction;
    a repeat must still not merge two groups, so it gets the id appended). A group cut into
    heads has none: its channels are counted in its head group."""
    roots = sorted({builder.find(g) for g in range(len(builder.parent))} - set(builder.children) - set(builder.heads))
    names: dict[int, str] = {}
    taken: set[str] = set()
    for root in roots:
        label = builder.labels[root]
        names[root] = label if label not in taken else f"{label}#{root}"
        taken.add(names[root])
    return names
