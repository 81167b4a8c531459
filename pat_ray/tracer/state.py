"""The tracer's state: the union-find over channel groups, and the members and cost terms
found so far.

The ``GroupBuilder`` merges groups that an element-wise op couples and collects ``Slot``s
(future members) and ``Term``s (future cost terms), the records of ``layout.py``, which
``trace.py`` turns into the ``ModelGraph`` once every node is seen. The op rules (``ops/``)
and layer families (``layers/``) change this state only through the builder's methods (the
records it keeps are private; ``tests/test_layering.py`` checks that no rule writes them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.graph import Role
from pat_ray.tracer.layout import AttributeSlot, Call, Heads, Layout, Pieces, Slot, Term


class HeadsConflict(UnsupportedModelError):
    """A group cut into heads is also used in a way heads cannot follow (split inside a head,
    coupled with another head size): the model is traced again with heads kept whole."""


@dataclass
class GroupBuilder:
    """Union-find over provisional groups, plus the members and costs seen so far."""

    model: nn.Module
    excluded: frozenset[str]
    parent: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    pinned: set[int] = field(default_factory=set)
    _subgroups: dict[int, int] = field(default_factory=dict)
    slots: list[Slot] = field(default_factory=list)
    params: dict[str, Slot] = field(default_factory=dict)  # per-channel parameters, by dotted name
    _terms: list[Term] = field(default_factory=list)
    _calls: dict[str, Call] = field(default_factory=dict)  # by module name
    children: dict[int, tuple[int, int]] = field(default_factory=dict)  # a root split in two: its parts
    heads: dict[int, Heads] = field(default_factory=dict)  # a root cut into heads (by a reshape): how
    _attributes: list[AttributeSlot] = field(default_factory=list)  # sizes surgery writes back
    _head_reshapes: set[str] = field(default_factory=set)  # nodes that cut channels into heads or merge them
    _head_counts: set[tuple[str, int]] = field(default_factory=set)  # (module, a number pruning heads changes)
    split_heads: bool = True  # False: heads are kept whole (the trace after a HeadsConflict)
    head_dim: bool = False  # True: a cut prunes each head's features (head_dim), not whole heads
    _feature_groups: set[int] = field(default_factory=set)  # groups made by a cut into heads' features
    _feature_cut_modules: set[str] = field(default_factory=set)  # modules whose forward makes such a cut
    _fixed_params: set[str] = field(default_factory=set)  # parameters a layer read as fixed channels

    # What rules record besides groups, each through one method (the fields stay private).
    def add_term(self, term: Term) -> None:
        """A cost term: a layer's MACs and parameters, or a product between activations."""
        self._terms.append(term)

    @property
    def terms(self) -> tuple[Term, ...]:
        return tuple(self._terms)

    @property
    def term_count(self) -> int:
        return len(self._terms)

    def count_again(self, since: int) -> None:
        """The terms added after the first ``since`` are a layer applied once more: MACs again, no parameters."""
        self._terms[since:] = [term.run_again() for term in self._terms[since:]]

    def record_call(self, module: str, call: Call) -> None:
        """The first call of ``module`` (a later one is coupled with it, not recorded)."""
        self._calls.setdefault(module, call)

    def call_of(self, module: str) -> Call | None:
        return self._calls.get(module)

    def set_subgroups(self, root: int, count: int) -> None:
        """Group ``root``'s channels form ``count`` equal runs (conv groups, GroupNorm groups) pruned alike."""
        self._subgroups[root] = count

    def subgroups_of(self, root: int) -> int | None:
        return self._subgroups.get(root)

    def add_size_attribute(self, slot: AttributeSlot) -> None:
        """A module attribute surgery rewrites from a group's kept count (a head count)."""
        self._attributes.append(slot)

    @property
    def size_attributes(self) -> tuple[AttributeSlot, ...]:
        return tuple(self._attributes)

    def read_as_fixed(self, params: Iterable[str]) -> None:
        """A layer read a tensor made from ``params`` (and buffers) as fixed channels: whatever
        later meets them keeps its channels, as no rule may slice them now."""
        self._fixed_params.update(params)

    def note_head_reshape(self, node: str) -> None:
        """``node`` cuts channels into heads or merges them."""
        self._head_reshapes.add(node)

    def note_head_count(self, module: str, count: int, by_features: bool = False) -> None:
        """``module`` holds ``count``, a number (heads, or a head's width) that pruning heads
        changes; ``by_features``: its cut prunes the heads' features (head_dim)."""
        self._head_counts.add((module, count))
        if by_features:
            self._feature_cut_modules.add(module)

    @property
    def feature_cut_modules(self) -> frozenset[str]:
        """The modules whose forward cuts channels into heads' features."""
        return frozenset(self._feature_cut_modules)

    @property
    def head_reshapes(self) -> frozenset[str]:
        return frozenset(self._head_reshapes)

    @property
    def head_counts(self) -> frozenset[tuple[str, int]]:
        return frozenset(self._head_counts)

    @property
    def cuts_whole_heads(self) -> bool:
        """Whether attention layers that follow heads themselves (MultiheadAttention, Swin) may
        cut whole heads here: not after a HeadsConflict, not when head_dim is pruned instead."""
        return self.split_heads and not self.head_dim

    def new_group(self, size: int, label: str, pinned: bool = False, axis: int = 1) -> Layout:
        """A new group of ``size`` channels (a layer's outputs); ``pinned``: none may be removed."""
        gid = len(self.parent)
        self.parent.append(gid)
        self.sizes.append(size)
        self.labels.append(label)
        if pinned:
            self.pinned.add(gid)
        return Layout((gid,), axis=axis)

    def fixed_group(self, size: int, label: str, axis: int = 1) -> Layout:
        """New channels that never change: a model input's, a kept-whole layer's result, zeros
        padded on, a reordering op's result. Every "new pinned group" is made here."""
        return self.new_group(size, label, pinned=True, axis=axis)

    def fixed_channels(self, label: str, shape: tuple[int, ...], axis: int | None = None) -> Layout | None:
        """Fixed channels for a result whose channels no longer follow its input's: on ``axis``,
        or, when the channel axis is gone (None), on dim 1 as for a model input; None when the
        result has no such dim."""
        axis = 1 if axis is None else axis
        return self.fixed_group(shape[axis], label, axis=axis) if len(shape) > axis else None

    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.sizes[ra] != self.sizes[rb]:
            raise UnsupportedModelError(
                f"{where}: couples channel groups of sizes {self.sizes[ra]} and {self.sizes[rb]} element-wise"
            )
        keep, drop = min(ra, rb), max(ra, rb)  # lower id = earlier in the graph names the group
        self.parent[drop] = keep
        if drop in self.pinned:
            self.pinned.add(keep)
        g = max(self._subgroups.pop(drop, 1), self._subgroups.get(keep, 1))
        if g > 1:
            self._subgroups[keep] = g
        self._merge_heads(keep, drop, where)

    def _merge_heads(self, keep: int, drop: int, where: str) -> None:
        """Two coupled groups are cut into heads the same way: their head groups are coupled."""
        moved = self.heads.pop(drop, None)
        if moved is None:
            return
        kept = self.heads.setdefault(keep, moved)
        if kept.head_dim != moved.head_dim:
            raise HeadsConflict(f"{where}: couples channels cut into heads of {kept.head_dim} and {moved.head_dim}")
        self.union(kept.group, moved.group, where)

    def unify(self, a: Layout, b: Layout, where: str) -> Layout:
        """Couple two tensors' channels position by position. Where one side's group boundary
        falls inside a group of the other (a zero-padded shortcut added to a conv's output), that
        group is split in two at the boundary, so each part can follow its own partner."""
        if a.repeat != b.repeat or a.axis != b.axis or self.width(a) != self.width(b):
            raise UnsupportedModelError(
                f"{where}: combines tensors whose channels are laid out differently "
                f"({self.width(a)} vs {self.width(b)} channels on dims {a.axis} and {b.axis})"
            )
        left, right, k = list(a.groups), list(b.groups), 0
        while k < len(left):
            ra, rb = self.find(left[k]), self.find(right[k])
            if ra in self.children or rb in self.children:  # split since: use its parts
                left[k : k + 1] = self.children.get(ra, (ra,))
                right[k : k + 1] = self.children.get(rb, (rb,))
            elif self.sizes[ra] != self.sizes[rb]:
                larger, at = (ra, self.sizes[rb]) if self.sizes[ra] > self.sizes[rb] else (rb, self.sizes[ra])
                self._split(larger, at, where)
            else:
                self.union(ra, rb, where)
                k += 1
        return a

    def unify_all(self, layouts: Iterable[Layout], where: str) -> Layout:
        """Couple every layout with the first (element-wise operands, stacked tensors)."""
        first, *rest = layouts
        for other in rest:
            self.unify(first, other, where)
        return first

    def cut_into_heads(
        self, layout: Layout, heads: int, head_dim: int, label: str, where: str, by_features: bool | None = None
    ) -> Layout | None:
        """Cut ``layout``'s channels into ``heads`` heads of ``head_dim`` consecutive channels,
        as a reshape (..., P*heads*head_dim) -> (..., P, heads, head_dim) does: a new group of
        one channel per head, which every piece shares (head ``h`` of q, k and v goes as one).
        None where the channels cannot be cut so (pinned, or a group not made of whole pieces).

        With ``head_dim`` set (or ``by_features``), the new group is one channel per feature of a
        head instead: feature ``d`` is channel ``d`` of every head of every piece (a "head" of
        width 1, repeated)."""
        by_features = self.head_dim if by_features is None else by_features
        leaves = self.leaves(layout)
        piece = heads * head_dim
        if not self.split_heads or layout.repeat != 1 or any(self.sizes[g] % piece for g in leaves.groups):
            return None
        if heads < 2 or self.is_pinned(layout) or any(g in self._subgroups for g in leaves.groups):
            return None
        unit, count = (1, head_dim) if by_features else (head_dim, heads)
        cut = self.tile(layout, count, unit, label, where)
        if by_features:
            self._feature_groups.add(cut.groups[0])
        return cut

    def cut_by_features(self, layout: Layout) -> bool:
        """Whether ``layout``'s channels are heads' features (a head_dim cut), not whole heads."""
        features = {self.find(g) for g in self._feature_groups}
        return bool(layout.groups) and all(self.find(g) in features for g in self.leaves(layout).groups)

    def tile(self, layout: Layout, count: int, unit: int, label: str, where: str) -> Layout:
        """A new group of ``count`` channels, each filling ``unit`` consecutive positions of
        ``layout``'s channels and repeated every ``count * unit`` positions (what a head or a
        head's feature is in the projections)."""
        group = self.new_group(count, label).groups[0]
        for g in self.leaves(layout).groups:
            self.heads.setdefault(g, Heads(group, self.sizes[g] // (count * unit), unit))
            if self.heads[g].head_dim != unit:
                raise HeadsConflict(f"{where}: cuts channels into heads of {unit}, already cut into another size")
            self.union(self.heads[g].group, group, where)
        return Layout((group,))

    def tie_equal_pieces(self, layout: Layout, count: int, where: str) -> Pieces | None:
        """``count`` equal pieces of one group's channels, cut by their number (``chunk``): the
        pieces stay equal only if each loses the same channels, so channel ``i`` of every piece
        is one channel of a group of their own. None where the group cannot be cut so."""
        leaves = self.leaves(layout).groups
        if len(leaves) != 1 or layout.repeat != 1 or count < 2:
            return None
        root = leaves[0]
        if self.sizes[root] % count or root in self.pinned or root in self.heads or self._subgroups.get(root, 1) > 1:
            return None
        parts, rest, width = [], root, self.sizes[root] // count
        for _ in range(count - 1):
            self._split(rest, width, where)
            head, rest = self.children[rest]
            parts.append(head)
        parts.append(rest)
        for part in parts[1:]:
            self.union(parts[0], part, where)
        return tuple(Layout((part,), axis=layout.axis) for part in parts)

    def head_unit(self, root: int) -> int:
        """Channels of ``root`` per channel of the group its cost counts in (a head's, or 1)."""
        heads = self.heads.get(root)
        return heads.pieces * heads.head_dim if heads else 1

    def split_at(self, layout: Layout, position: int, where: str) -> None:
        """Make a group boundary fall at channel ``position`` of ``layout`` (a slice ends there):
        the group that straddles it, if any, is split in two."""
        offset = 0
        for group in self.leaves(layout).groups:
            size = self.sizes[group]
            if offset < position < offset + size:
                self._split(group, position - offset, where)
                return
            offset += size

    def _split(self, root: int, at: int, where: str) -> None:
        if root in self.heads or any(self.find(cut.group) == root for cut in self.heads.values()):
            raise HeadsConflict(f"{where}: splits channels that are cut into attention heads")
        if self._subgroups.get(root, 1) > 1:
            raise UnsupportedModelError(f"{where}: couples part of a channel group that feeds a grouped conv")
        label, pinned = self.labels[root], root in self.pinned  # names without sizes: the same after pruning
        head = self.new_group(at, f"{label}/0", pinned).groups[0]
        tail = self.new_group(self.sizes[root] - at, f"{label}/1", pinned).groups[0]
        self.children[root] = (head, tail)

    def leaves(self, layout: Layout) -> Layout:
        """``layout`` with every group split since it was made replaced by its parts, in order."""
        found: list[int] = []
        pending = [self.find(g) for g in reversed(layout.groups)]
        while pending:
            root = self.find(pending.pop())
            if root in self.children:
                pending.extend(reversed(self.children[root]))
            else:
                found.append(root)
        return Layout(tuple(found), layout.repeat, layout.axis)

    def add_member(self, module: str, role: Role, layout: Layout, axis: int, input: int = 0) -> None:
        """``module`` holds the channels of ``layout`` on ``axis`` of its weight, in ``role``
        (for ``in``: the channels of its input number ``input``)."""
        self.slots.append(Slot(module, role, layout, axis, input))

    def add_norm(self, module: str, layout: Layout, params_per_channel: int) -> None:
        """A norm over ``layout``'s channels (BatchNorm, a per-channel LayerNorm, GroupNorm):
        a ``norm`` member, and a term of ``params_per_channel`` parameters per kept channel."""
        self.add_member(module, "norm", layout, 0)
        self._terms.append(Term(module=module, out=layout, params_per_out=params_per_channel))

    def add_param(self, target: str, axis: int, layout: Layout, where: str) -> bool:
        """A parameter applied per channel of ``layout`` along ``axis``: sliced with the group.
        Applied again along the same axis (CaiT's class token, concatenated, then added to), the
        channels it meets are the same ones: coupled. One a layer read whole (``read_as_fixed``)
        keeps the channels it meets instead. Returns whether it was new."""
        if target in self._fixed_params:
            self.pin(layout)
            return False
        seen = self.params.get(target)
        if seen is None:
            self.params[target] = Slot(target, "param", layout, axis)
            return True
        if seen.axis != axis:
            raise UnsupportedModelError(f"{where}: parameter {target!r} is applied to channels along two of its axes")
        self.unify(Layout(seen.layout.groups, seen.layout.repeat), Layout(layout.groups, layout.repeat), where)
        return False

    def slice_param(self, target: str, axis: int, layout: Layout, where: str) -> None:
        """A parameter applied per channel (a layer scale, a bias piece, a position-bias column):
        sliced with the group, and its size counted per kept channel the first time it is met."""
        if self.add_param(target, axis, layout, where):
            self.count_param(target, layout)

    def count_param(self, target: str, layout: Layout) -> None:
        """Count a per-channel tensor's size per kept channel (a buffer is no parameter: 0)."""
        channels = self.width(layout) // layout.repeat
        self._terms.append(
            Term(module=target, out=layout, params_per_out=self._numel(target) // channels, is_layer=False)
        )

    def count_fixed(self, target: str) -> None:
        """Count a parameter whose size no pruning changes (a PReLU's one slope, a LayerNorm's
        weight over spatial axes), so the traced cost equals the measured one."""
        self._terms.append(Term(module=target, out=Layout(()), params_per_out=self._numel(target), is_layer=False))

    def count_fixed_macs(self, node: str, macs: int) -> None:
        """Count MACs that no pruning changes (a call kept whole runs its products at the
        widths it has); nothing when there are none."""
        if macs:
            self._terms.append(Term(module=f"<{node}>", out=Layout(()), macs_per_pair=macs, is_layer=False))

    def count_weights_as_they_are(self, module: str) -> None:
        """Count every parameter of ``module`` at its present size (a layer kept whole)."""
        for param, _ in self.model.get_submodule(module).named_parameters():
            self.count_fixed(f"{module}.{param}")

    def _numel(self, target: str) -> int:
        try:
            return self.model.get_parameter(target).numel()
        except AttributeError:  # a buffer
            return 0

    def is_pinned(self, layout: Layout) -> bool:
        """Whether no channel of ``layout`` can be removed (so its width never changes)."""
        return set(self.leaves(layout).groups) <= self.pinned

    def pin(self, layout: Layout) -> None:
        for g in self.leaves(layout).groups:
            self.pinned.add(g)
            if g in self.heads:  # the channels stay, so do their heads
                self.pinned.add(self.find(self.heads[g].group))

    def width(self, layout: Layout) -> int:
        return sum(self.sizes[self.find(g)] for g in layout.groups) * layout.repeat
