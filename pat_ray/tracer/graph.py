"""What tracing learns about a model: channel groups, their members, and cost terms.

Plain data, no torch.fx: selection, criteria and surgery depend on these types only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from pat_ray.core.kinds import ATTENTION_CUTS, AttentionCut

INPUT_GROUP_PREFIX = "<input "  # the name of a group made of a model input's channels

Role = Literal["out", "in", "norm", "depthwise", "grouped", "param"]  # see Member
PRODUCER_ROLES: tuple[Role, ...] = ("out", "depthwise", "grouped")  # members whose weights make the channels


def check_attention(value: object) -> AttentionCut:
    """``value`` if it names an attention cut (a caller's argument, a file's field), else ValueError."""
    if value not in ATTENTION_CUTS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_CUTS)}; got {value!r}")
    return value


Example = torch.Tensor | tuple[torch.Tensor, ...]  # a model's example input: one tensor, or one per argument


def first_sample(example: Example) -> tuple[torch.Tensor, ...]:
    """The first sample of every input, as positional arguments for the model."""
    inputs = example if isinstance(example, tuple | list) else (example,)
    return tuple(t[:1] for t in inputs)


@dataclass(frozen=True)
class Member:
    """One place a group's channels live: ``module``'s dimension selected by ``role``.

    role: ``out`` (the output channels of a conv / linear / transposed conv), ``in`` (its
    input channels), ``norm`` (BatchNorm), ``depthwise`` (a depthwise conv whose input and
    output follow the group), ``grouped`` (a grouped conv with in == out channels whose groups
    stay, each narrowed), or ``param`` (a parameter or buffer that an element-wise op applies
    per channel, e.g. a layer scale: ``module`` is then the parameter's dotted name).
    ``axis``: the dim of the weight (of the parameter, for ``param``) that holds the channels:
    0 for outputs and 1 for inputs of a conv or linear, the other way round for a transposed
    conv; biases and norms hold them on dim 0.
    Channel ``i`` of the group occupies positions ``offset + i*repeat ... + repeat-1``.
    ``input``: for role ``in``, which of the layer's inputs the channels are of (0: the first;
    ``nn.Bilinear`` reads two).
    """

    module: str
    role: Role
    offset: int = 0
    repeat: int = 1
    axis: int = 0
    input: int = 0

    def positions(self, channels: torch.Tensor) -> torch.Tensor:
        """Positions in the module's dimension occupied by the given group channels."""
        base = self.offset + channels.long() * self.repeat
        if self.repeat == 1:
            return base
        return (base[:, None] + torch.arange(self.repeat)).reshape(-1)


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be removed together. ``subgroups`` > 1 means the group feeds a
    grouped conv: it may only shrink by the same number of channels in each conv group."""

    name: str
    size: int
    members: tuple[Member, ...]
    pinned: bool
    subgroups: int = 1

    def producers(self) -> Iterator[Member]:
        """The members whose weights make the group's channels (convs, linears, depthwise)."""
        return self.members_with_role(*PRODUCER_ROLES)

    @property
    def positions_per_channel(self) -> int:
        """How many positions of its producers one channel fills: an attention head's
        ``head_dim`` rows of q, k and v; 1 for a plain channel."""
        return min((m.repeat for m in self.producers()), default=1)

    def members_with_role(self, *roles: Role) -> Iterator[Member]:
        return (m for m in self.members if m.role in roles)


@dataclass(frozen=True)
class ProductShape:
    """A product between activations (``a @ b``) as the latency probe rebuilds it to time:
    both operands' shapes for one sample, and in each the dim whose size is the term's output
    channels (``out_dims``: heads carried through) or summed channels (``in_dims``); None where
    a dim is neither."""

    shapes: tuple[tuple[int, ...], tuple[int, ...]]
    out_dims: tuple[int | None, int | None]
    in_dims: tuple[int | None, int | None] = (None, None)
    batched: tuple[bool, bool] = (True, True)  # whether dim 0 is the batch (a weight's is not)

    def at(self, n_in: int, n_out: int, batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The operands' shapes for ``batch`` samples with ``n_in`` summed and ``n_out`` carried channels."""
        resized = []
        for shape, out_dim, in_dim, batched in zip(self.shapes, self.out_dims, self.in_dims, self.batched):
            dims = list(shape)
            if batched:  # one sample's dim 0 is 1, or the windows / heads folded into it
                dims[0] *= batch
            if out_dim is not None:
                dims[out_dim] = n_out
            if in_dim is not None:
                dims[in_dim] = n_in
            resized.append(tuple(dims))
        return resized[0], resized[1]


@dataclass(frozen=True)
class ComputeTerm:
    """Cost of one conv / linear / norm as a function of group channel counts.

    macs = macs_per_pair * n_out * n_in / in_divisor (n_in = 1 for depthwise and norms)
    params = params_per_pair * n_out * n_in / in_divisor + params_per_out * n_out
    with n_out = out_repeat * (channels kept in out_groups), n_in = in_repeat * (in in_groups):
    a repeat > 1 counts several of the layer's channels per group channel (a head's, a
    flattened channel's positions). A layer with a second input whose width multiplies its
    cost (``nn.Bilinear``: out x in1 x in2 weights) names it as ``factor_groups``: n_in is then
    the product of both inputs' widths.
    ``is_layer`` is False for a per-channel parameter (``module`` is then its dotted name): it
    is counted, but a latency table has no layer of it to time.
    """

    module: str
    out_groups: tuple[str, ...]
    in_groups: tuple[str, ...]
    in_repeat: int
    in_divisor: int
    macs_per_pair: int
    params_per_pair: int
    params_per_out: int
    is_layer: bool = True
    out_repeat: int = 1
    product: ProductShape | None = None  # a product between activations, timed as one
    factor_groups: tuple[str, ...] = ()
    factor_repeat: int = 1

    @property
    def timed(self) -> bool:
        """Whether a latency table times this term: a layer's, or a product's."""
        return self.is_layer or self.product is not None

    def widths(self, counts: Mapping[str, int]) -> tuple[int, int]:
        """The layer's (output, input) widths when group ``g`` keeps ``counts[g]`` channels; a
        side with no groups has a fixed size, counted as 1."""
        n_out = sum(counts[g] for g in self.out_groups) * self.out_repeat if self.out_groups else 1
        n_in = sum(counts[g] for g in self.in_groups) * self.in_repeat if self.in_groups else 1
        if self.factor_groups:
            n_in *= sum(counts[g] for g in self.factor_groups) * self.factor_repeat
        return n_out, n_in


@dataclass(frozen=True)
class SizeAttribute:
    """A module attribute that the forward writes into a shape (timm's ``self.num_heads`` in
    ``reshape(B, N, 3, self.num_heads, self.head_dim)``): after pruning it must equal
    ``per_channel`` times the channels ``group`` keeps, or the reshape no longer fits."""

    module: str
    attribute: str
    group: str
    per_channel: int


@dataclass(frozen=True)
class ModelGraph:
    """What tracing learned about a model: its channel groups and its cost terms."""

    groups: tuple[ChannelGroup, ...]
    terms: tuple[ComputeTerm, ...]
    input_shape: tuple[int, ...]
    output_shapes: tuple[tuple[int, ...], ...] = ()  # of every tensor the model returns (one sample)
    size_attributes: tuple[SizeAttribute, ...] = ()  # set by surgery from the kept channels
    attention: AttentionCut = "heads"  # how the trace cut attention (the groups' names depend on it)
    shapes_from_values: bool = False  # an op's result shape depends on values: checks compute the products

    @property
    def prunable(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if not g.pinned)

    def group(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no channel group named {name!r}")
