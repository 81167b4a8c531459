"""One ``call_function`` / ``call_method`` node as an op rule sees it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch.fx as fx

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layout import Layout, Traced
from pat_ray.tracer.nodes import piece_shapes
from pat_ray.tracer.state import GroupBuilder


@dataclass(frozen=True)
class OpCall:
    """``inputs``: the layouts of the traced tensors among the arguments (may be empty for an
    op that makes a tensor); ``shape``: the result's (``()`` for an op of form ``pieces``, whose
    results' shapes are ``pieces``); ``layouts``: every node's so far."""

    node: fx.Node
    inputs: list[Layout]
    shape: tuple[int, ...]
    layouts: Mapping[fx.Node, Traced]
    where: str

    @property
    def first(self) -> Layout | None:
        """The layout of the first argument, when that is one traced tensor."""
        args = self.node.args
        traced = self.layouts.get(args[0]) if args and isinstance(args[0], fx.Node) else None
        return traced if isinstance(traced, Layout) else None

    @property
    def pieces(self) -> list[tuple[int, ...] | None]:
        """The shapes of the tensors an op of form ``pieces`` returns (None: not a tensor)."""
        shapes = piece_shapes(self.node) or []
        return [s if isinstance(s, tuple) else None for s in shapes]

    def first_layout(self) -> Layout:
        """``first``, which the rule needs: without it the op is not one pat_ray can follow."""
        first = self.first
        if first is None:
            raise UnsupportedModelError(f"{self.where}: pat_ray does not know how this op treats channels")
        return first


OpRule = Callable[[GroupBuilder, OpCall], Traced]  # the layout of the op's result (of each, for ``pieces``)
