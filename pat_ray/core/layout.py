"""Tracing state: tensor channel layouts and the union-find over channel groups.

A ``Layout`` says which groups a tensor's channel axis is made of (dim 1, or the last dim
after a permute to channels-last); the ``GroupBuilder`` merges
groups that an element-wise op couples and collects the members and cost terms the tracer
finds. Kept apart from the op visitors in ``groups.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from pat_ray.core.graph import Role, UnsupportedModelError


@dataclass
class Layout:
    """The channel structure of one traced tensor: the group ids along its channel ``axis``, in
    order; each channel fills ``repeat`` consecutive positions (> 1 after a flatten)."""

    groups: tuple[int, ...]
    repeat: int = 1
    axis: int = 1

    def on_dim1(self, where: str, allow_repeat: bool = False) -> Layout:
        """This layout, if its channels are where a conv / BatchNorm / flatten expects them."""
        if self.axis != 1:
            raise UnsupportedModelError(
                f"{where}: its input holds channels on dim {self.axis} (after a permute), not on dim 1"
            )
        if self.repeat != 1 and not allow_repeat:
            raise UnsupportedModelError(f"{where}: its input is flattened features, not channels")
        return self


Pieces = tuple[Layout | None, ...]  # the layouts of an op's several results (split, chunk)
Traced = Layout | Pieces | None  # what the tracer knows of a node's result


@dataclass
class GroupBuilder:
    """Union-find over provisional groups, plus the members and costs seen so far."""

    model: nn.Module
    excluded: frozenset[str]
    parent: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    pinned: set[int] = field(default_factory=set)
    subgroups: dict[int, int] = field(default_factory=dict)
    slots: list[tuple[str, Role, Layout, int]] = field(default_factory=list)  # module, role, layout, weight axis
    params: dict[str, tuple[int, Layout]] = field(default_factory=dict)  # per-channel parameters: axis, layout
    raw_terms: list[tuple[str, Layout, Layout | None, int, int, int, int]] = field(default_factory=list)
    untimed: set[str] = field(default_factory=set)  # terms of tensors, not layers: no latency of their own
    calls: dict[str, tuple[Layout, Layout | None]] = field(default_factory=dict)  # module: first call's in, out

    def new_group(self, size: int, label: str, pinned: bool = False, axis: int = 1) -> Layout:
        gid = len(self.parent)
        self.parent.append(gid)
        self.sizes.append(size)
        self.labels.append(label)
        if pinned:
            self.pinned.add(gid)
        return Layout((gid,), axis=axis)

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
        g = max(self.subgroups.pop(drop, 1), self.subgroups.get(keep, 1))
        if g > 1:
            self.subgroups[keep] = g

    def unify(self, a: Layout, b: Layout, where: str) -> Layout:
        sizes_a = [self.sizes[self.find(g)] for g in a.groups]
        sizes_b = [self.sizes[self.find(g)] for g in b.groups]
        if sizes_a != sizes_b or a.repeat != b.repeat or a.axis != b.axis:
            raise UnsupportedModelError(
                f"{where}: combines tensors whose channels come from differently split "
                f"groups ({sizes_a} vs {sizes_b}); partial-group coupling is not supported"
            )
        for ga, gb in zip(a.groups, b.groups):
            self.union(ga, gb, where)
        return a

    def add_param(self, target: str, axis: int, layout: Layout, where: str) -> None:
        """A parameter applied per channel of ``layout`` along ``axis``: sliced with the group."""
        if target in self.params:
            raise UnsupportedModelError(f"{where}: parameter {target!r} is applied to channels in more than one place")
        self.params[target] = (axis, layout)

    def count_param(self, target: str, layout: Layout) -> None:
        """Count a per-channel tensor's size per kept channel (a buffer is no parameter: 0)."""
        channels = self.width(layout) // layout.repeat
        self.raw_terms.append((target, layout, None, 1, 0, 0, self._numel(target) // channels))
        self.untimed.add(target)

    def count_fixed(self, target: str) -> None:
        """Count a parameter whose size no pruning changes (a PReLU's one slope, a LayerNorm's
        weight over spatial axes), so the traced cost equals the measured one."""
        self.raw_terms.append((target, Layout(()), None, 1, 0, 0, self._numel(target)))
        self.untimed.add(target)

    def _numel(self, target: str) -> int:
        is_param = any(name == target for name, _ in self.model.named_parameters())
        return self.model.get_parameter(target).numel() if is_param else 0

    def pin(self, layout: Layout) -> None:
        for g in layout.groups:
            self.pinned.add(self.find(g))

    def width(self, layout: Layout) -> int:
        return sum(self.sizes[self.find(g)] for g in layout.groups) * layout.repeat
