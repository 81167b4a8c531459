"""Run a traced graph on the example and record the shape of every value it computes.

The channel tracer reads each node's shape (how many channels, where the channel axis went).
Running the graph through an Interpreter bound to the model itself skips building a
``GraphModule`` (its code generation and module copies cost more than the run on small CNNs),
and recording bare shapes instead of ShapeProp's full tensor metadata keeps the per-node
overhead low. The products run on meta tensors (``ShapesOnly``) unless an op whose result
shape follows its operands' values (``nonzero``, a boolean mask) is in the graph: its shapes
on zeros would not be the ones training sees, so the products are computed then.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.fx as fx
from torch import nn

from pat_ray.core.cost.products import ProductCounter
from pat_ray.tracer.layers.table import kept_whole
from pat_ray.tracer.nodes import PIECE_SHAPES, PRODUCT_MACS, RETURNED_ARGUMENT, SHAPE, PieceShape
from pat_ray.tracer.shapes_only import products_on_meta as on_meta


class Recorded(NamedTuple):
    """What the run on the example recorded besides each node's shapes (in its ``meta``)."""

    graph: fx.Graph
    output_shapes: tuple[tuple[int, ...], ...]  # the tensors the model returns, nested ones flattened
    shapes_from_values: bool  # some shape depends on values: the products had to be computed


def record_shapes(model: nn.Module, graph: fx.Graph, example: tuple[Any, ...], products_on_meta: bool) -> Recorded:
    """Run ``graph`` (traced from ``model``) on ``example`` without gradients, each node's
    shapes written to its ``meta``; the products on meta tensors while ``products_on_meta``
    and no op whose shape follows values turns up."""
    recorder = _ShapeRecorder(model, graph=graph)
    recorder.products_on_meta = products_on_meta
    with torch.no_grad():
        try:
            with on_meta(products_on_meta):
                result = recorder.run(*example)
        except ShapeFromValues:
            recorder.products_on_meta = False
            result = recorder.run(*example)
    outputs = tuple(tuple(t.shape) for t in nested_leaves(result, torch.is_tensor))
    return Recorded(graph, outputs, not recorder.products_on_meta)


class ShapeFromValues(Exception):
    """An op whose result's shape depends on its operands' values, met under ``ShapesOnly``."""


# aten's ops tagged ``dynamic_output_shape``, by the names Python calls them (``argwhere`` and a
# one-argument ``where`` run ``nonzero``), and indexing with a boolean mask.
_SHAPE_FROM_VALUES = frozenset(
    {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "one_hot", "repeat_interleave"}
)


def shape_from_values(node: fx.Node, env: dict[fx.Node, Any]) -> bool:
    if node.op not in ("call_function", "call_method"):
        return False
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if name in _SHAPE_FROM_VALUES or (name == "where" and len(node.args) + len(node.kwargs) == 1):
        return True
    if node.target is not operator.getitem:
        return False
    masks: list[bool] = []
    index = fx.node.map_arg(node.args[1], lambda n: env.get(n))
    fx.node.map_aggregate(index, lambda i: masks.append(isinstance(i, torch.Tensor) and i.dtype == torch.bool))
    return any(masks)


class _ShapeRecorder(fx.Interpreter):
    products_on_meta = True  # under ShapesOnly: an op whose shape follows values stops the run

    def run_node(self, n: fx.Node) -> Any:
        if self.products_on_meta and shape_from_values(n, self.env):
            raise ShapeFromValues(n.name)
        if _runs_unseen_products(self.module, n):
            counter = ProductCounter()
            with counter:
                value = super().run_node(n)
            n.meta[PRODUCT_MACS] = counter.macs
            returned = [a for a in n.all_input_nodes if self.env.get(a) is value]
            if n.op == "call_function" and returned:  # timm's maybe_add_mask(attn, None): attn itself
                n.meta[RETURNED_ARGUMENT] = returned[0]
        else:
            value = super().run_node(n)
        if n.target is operator.setitem:  # what it returns is None; what it made is its first argument
            value = self.env[n.args[0]] if isinstance(n.args[0], fx.Node) else value
        if isinstance(value, torch.Tensor):
            n.meta[SHAPE] = tuple(value.shape)
        elif isinstance(value, list | tuple) and n.op != "output" and any(isinstance(v, torch.Tensor) for v in value):
            n.meta[PIECE_SHAPES] = [_piece_shape(v) for v in value]
        return value


def _runs_unseen_products(model: nn.Module, node: fx.Node) -> bool:
    """A call the channel tracer does not look into whose products (attention's) still cost:
    a function fx kept whole that is not torch's or Python's own (``torch.fx.wrap``-ped, as
    torchvision's Swin attention), or a module kept whole (``nn.MultiheadAttention``)."""
    if node.op == "call_module":
        return kept_whole(model.get_submodule(str(node.target)))
    package = str(getattr(node.target, "__module__", None) or "").split(".")[0]
    return node.op == "call_function" and package not in ("torch", "_operator", "operator", "builtins", "math", "")


def _piece_shape(value: Any) -> PieceShape:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return [_piece_shape(v) for v in value] if isinstance(value, list | tuple) else None


def nested_leaves(value: Any, is_leaf: Callable[[Any], bool]) -> Iterator[Any]:
    """The leaves of nested dicts / lists / tuples in order: how a model's outputs are read,
    both from the model itself and from the trace's record of them."""
    if is_leaf(value):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from nested_leaves(item, is_leaf)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from nested_leaves(item, is_leaf)
