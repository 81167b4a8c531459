"""What one family of layers (convs, Linears, BatchNorms...) tells each part of pat_ray.

A family answers four questions about its layers, and each part asks only its own: the
tracer (how a call maps channels: ``trace``), surgery (how to cut a layer's tensors:
``shrink``), the FLOPs count (how many MACs one call costs: ``macs``) and the latency probe
(how to rebuild a layer at other widths and what identifies a timing). Supporting a new
layer family is one subclass in one file, registered with ``@layer_family`` (``registry.py``),
and its module's import in ``layers/table.py``; CONTRIBUTING.md walks through two.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx
from torch import nn

from pat_ray.tracer.graph import Role
from pat_ray.tracer.layout import Layout, Pieces, Traced
from pat_ray.tracer.nodes import known_shape
from pat_ray.tracer.state import GroupBuilder

Reindex = Callable[[torch.Tensor], torch.Tensor]  # a tensor with some channels removed
Rewrite = Callable[[nn.Module, str, Reindex], None]  # replace module.<name> by reindex(it), optimizer state along


@dataclass(frozen=True)
class LayerCall:
    """One call of a layer, as its family's ``trace`` sees it: ``name`` is the module whose
    weights run (``node`` may be a functional call inside that module's forward). ``layout``:
    of the first input's channels; ``others``: of each later tensor argument, None where the
    tracer follows no channels (a constant)."""

    builder: GroupBuilder
    node: fx.Node
    name: str
    module: nn.Module
    layout: Layout
    where: str
    others: tuple[Layout | None, ...] = ()

    @property
    def inputs(self) -> tuple[Layout | None, ...]:
        """Every input's layout, in argument order."""
        return (self.layout, *self.others)

    def shape_of_input(self, input: int) -> tuple[int, ...]:
        """The recorded shape of tensor argument number ``input``."""
        tensors = [a for a in self.node.args if isinstance(a, fx.Node)]
        return known_shape(tensors[input] if input < len(tensors) else None, self.where)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return known_shape(self.node.args[0], self.where)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return known_shape(self.node, self.where)

    def on_dim1(self) -> Layout:
        """The input layout, which must hold its channels on dim 1 (convs, BatchNorms). Fixed
        channels elsewhere (the model's input, reshaped into patches and moved) never change
        any width: what dim 1 then holds is fixed too."""
        if (self.layout.axis != 1 or self.layout.repeat != 1) and self.builder.is_pinned(self.layout):
            fixed = self.builder.fixed_channels(f"<{self.node.name} input>", self.in_shape)
            if fixed is not None:
                return fixed
        return self.layout.on_dim1(self.where)


@dataclass(frozen=True)
class Cut:
    """What surgery removes from one module: sorted indices of its output and input channels
    (of its first input; ``later_inputs``: of its second, third... when it reads several),
    and the roles the module plays in the groups it belongs to."""

    drop_out: torch.Tensor
    drop_in: torch.Tensor
    roles: frozenset[Role]
    later_inputs: tuple[torch.Tensor, ...] = ()

    def drop_of_input(self, input: int) -> torch.Tensor:
        """The channels removed from input number ``input`` (0: the first)."""
        if input == 0:
            return self.drop_in
        if input <= len(self.later_inputs):
            return self.later_inputs[input - 1]
        return torch.empty(0, dtype=torch.long)


class LayerFamily:
    """One family of layers. ``types``: the module classes it covers, as ``@layer_family``
    registered them (subclasses without a family of their own too). The defaults describe a
    layer without weights: nothing to cut, no MACs, not timed."""

    types: ClassVar[tuple[type[nn.Module], ...]] = ()
    counts_macs: ClassVar[bool] = False  # whether ``macs`` is part of the model's FLOPs
    timed: ClassVar[bool] = False  # whether the latency probe can time it
    whole_unless_followed: ClassVar[bool] = False  # kept whole where ``follow`` returns None
    tensor_inputs: ClassVar[int] = 1  # inputs ``trace`` follows; the tracer keeps any further one whole
    reads_indices: ClassVar[bool] = False  # its input holds indices (token ids), never channels

    def parameter_name(self, name: str) -> str:
        """The attribute holding what criteria call ``weight`` or ``bias`` (the channels' rows)."""
        return name

    def resized(self, module: nn.Module) -> None:  # noqa: B027
        """After surgery set its size attributes (a head count): make the module run with them
        (Swin's attention becomes a forward that does not tie the heads to its input)."""

    def follow(self, builder: GroupBuilder, node: fx.Node, layouts: dict[fx.Node, Traced]) -> Traced | None:
        """For a family of layers otherwise kept whole (``nn.MultiheadAttention``): the layouts
        of a call it can read from the whole graph, or None to keep that call whole."""
        return None

    def trace(self, call: LayerCall) -> Layout | None:
        """The layout of the call's result, recording members and cost terms on the builder."""
        raise NotImplementedError

    def trace_pieces(self, call: LayerCall, shapes: list[tuple[int, ...] | None]) -> Pieces | None:
        """For a call that returns several tensors (of ``shapes``): each one's layout, or None
        when the family cannot tell (the call is then refused)."""
        return None

    def shrink(self, module: nn.Module, cut: Cut, rewrite: Rewrite) -> None:
        """Remove ``cut``'s channels from the module's tensors (through ``rewrite``) and keep its
        size attributes in step."""
        raise TypeError(f"native surgery cannot shrink a {type(module).__name__}")

    def macs(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """Multiply-accumulates of one call on one sample (read from the actual tensors)."""
        return 0

    def rebuilt(self, module: nn.Module, n_in: int, n_out: int) -> nn.Module:
        """A fresh layer like ``module`` with ``n_in`` inputs and ``n_out`` outputs, to time."""
        raise TypeError(f"cannot time a {type(module).__name__}")

    def timing_key(self, module: nn.Module, n_in: int, n_out: int) -> tuple[Hashable, ...]:
        """What identifies a timing of ``rebuilt(module, n_in, n_out)``: equal keys time alike."""
        return (type(module).__name__, n_in, n_out)

    def input_follows_output(self, module: nn.Module) -> bool:
        """Whether the layer's input width is its output width (norms, depthwise convs)."""
        return False

    def reads_last_axis(self, module: nn.Module, shape: tuple[int, ...]) -> bool:
        """Whether the layer reads its features from the input's last axis (channels-last)."""
        return False

    def width_step(self, module: nn.Module) -> int:
        """Output widths come in multiples of this (a grouped conv keeps its groups)."""
        return 1


def complement(indices: torch.Tensor, size: int) -> torch.Tensor:
    """The indices of ``range(size)`` that are not in ``indices``, sorted."""
    mask = torch.ones(size, dtype=torch.bool)
    mask[indices] = False
    return mask.nonzero().flatten()


def kept_indices(size: int, drop: torch.Tensor) -> torch.Tensor:
    """The sorted indices of ``range(size)`` that survive removing ``drop``."""
    return complement(drop, size) if drop.numel() else torch.arange(size)


def select(dim: int, index: torch.Tensor) -> Reindex:
    """Keep ``index`` (sorted, unique) along ``dim``."""

    def fn(t: torch.Tensor) -> torch.Tensor:
        if index.numel() == t.shape[dim]:  # nothing to drop
            return t
        return t.index_select(dim, index.to(t.device))

    return fn


def chained(steps: list[Reindex]) -> Reindex:
    """Apply ``steps`` in order (a weight cut along its output axis, then its input axis)."""

    def fn(tensor: torch.Tensor) -> torch.Tensor:
        for step in steps:
            tensor = step(tensor)
        return tensor

    return fn
