"""What the tracer knows of a tensor and what it records while tracing: ``Layout`` (which
channel groups a tensor's channel axis is made of: dim 1, or the last dim after a permute to
channels-last), and the records the ``GroupBuilder`` (``state.py``) collects: ``Slot``s (future
members), ``Term``s (future cost terms), head cuts, size attributes and module calls."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.graph import ProductShape, Role


@dataclass
class Layout:
    """The channel structure of one traced tensor: the group ids along its channel ``axis``, in
    order; each channel fills ``repeat`` consecutive positions (> 1 after a flatten)."""

    groups: tuple[int, ...]
    repeat: int = 1
    axis: int = 1

    def on_dim1(self, where: str) -> Layout:
        """This layout, if its channels are where a conv / BatchNorm / flatten expects them."""
        if self.axis != 1:
            raise UnsupportedModelError(
                f"{where}: its input holds channels on dim {self.axis} (after a permute), not on dim 1"
            )
        if self.repeat != 1:
            raise UnsupportedModelError(f"{where}: its input is flattened features, not channels")
        return self


Pieces = tuple["Layout | Pieces | None", ...]  # the layouts of an op's several results (split, chunk; nested)
Traced = Layout | Pieces | None  # what the tracer knows of a node's result


@dataclass(frozen=True)
class Slot:
    """A member in the making: ``module`` plays ``role`` for the channels of ``layout``, which
    sit on ``axis`` of its weight (of the parameter itself, for role ``param``)."""

    module: str
    role: Role
    layout: Layout
    axis: int
    input: int = 0  # which of the layer's inputs (role ``in``)


@dataclass(frozen=True, kw_only=True)
class Term:
    """A cost term in the making: ``ComputeTerm``'s numbers, with the layouts its output and
    input channels come from (group names exist only once tracing ends)."""

    module: str
    out: Layout
    inp: Layout | None = None
    in_divisor: int = 1
    macs_per_pair: int = 0
    params_per_pair: int = 0
    params_per_out: int = 0
    is_layer: bool = True  # False: a tensor, not a layer (no latency of its own)
    product: ProductShape | None = None  # a product between activations: how to time it
    factor: Layout | None = None  # a second input multiplying the cost (``ComputeTerm.factor_groups``)

    def run_again(self) -> Term:
        """The same layer applied once more: its MACs count again, its parameters do not."""
        return replace(self, params_per_pair=0, params_per_out=0)


class Heads(NamedTuple):
    """How a group of channels is cut into attention heads: ``group`` is the head group (one
    channel per head), each of the group's channels belongs to head ``(i // head_dim) % heads``,
    and the group holds ``pieces`` such runs of heads (q, k and v of a fused projection). When
    head_dim is pruned instead, ``group`` has a channel per feature of a head, ``head_dim`` is 1
    and every head of every piece is a run."""

    group: int
    pieces: int
    head_dim: int


class AttributeSlot(NamedTuple):
    """A ``SizeAttribute`` in the making: the group is a provisional id until tracing ends."""

    module: str
    attribute: str
    group: int
    per_channel: int


class Call(NamedTuple):
    """The layouts of a weighted module's first call, which every later call must match
    (``others``: of its inputs after the first)."""

    inp: Layout
    out: Layout | None
    others: tuple[Layout | None, ...] = ()
