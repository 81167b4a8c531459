"""The table of layer families, and the tracer's step for one call of a module.

``family_of`` is how the tracer, surgery, the FLOPs count and the latency probe find the
family of a module: layers a plugin declared (``declared.py``) first, then ``FAMILIES`` in
order, the first match wins. A ``torch.nn`` layer in no family (LSTM, MultiheadAttention,
Embedding...) is ``kept_whole``: its inputs and outputs never change, so everything around it
can still be pruned. Any other module without a family is traced into (its forward's ops).
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layers.batch_norm import ChannelNorm
from pat_ray.tracer.layers.conv import Conv
from pat_ray.tracer.layers.declared import Declared, rule_for
from pat_ray.tracer.layers.family import LayerCall, LayerFamily
from pat_ray.tracer.layers.group_norm import GroupNorm
from pat_ray.tracer.layers.layer_norm import LayerNorm
from pat_ray.tracer.layers.linear import Linear
from pat_ray.tracer.layers.multihead import MultiheadAttention
from pat_ray.tracer.layers.prelu import PReLU
from pat_ray.tracer.layers.rms_norm import RMSNorm
from pat_ray.tracer.layers.stateless import ChannelMixing, Flatten, Passthrough, Reordering
from pat_ray.tracer.layers.swin import SwinAttention
from pat_ray.tracer.layers.transposed import TransposedConv
from pat_ray.tracer.layout import Call, Layout, Traced
from pat_ray.tracer.nodes import PRODUCT_MACS, piece_shapes, shape_of
from pat_ray.tracer.state import GroupBuilder

FAMILIES: tuple[LayerFamily, ...] = (
    MultiheadAttention(),
    SwinAttention(),
    Conv(),
    TransposedConv(),
    Linear(),
    ChannelNorm(),
    LayerNorm(),
    RMSNorm(),
    GroupNorm(),
    PReLU(),
    Passthrough(),
    Flatten(),
    Reordering(),
    ChannelMixing(),
)


def family_of(module: nn.Module) -> LayerFamily | None:
    """The family that knows ``module``'s layers (None: no family does)."""
    rule = rule_for(module)
    if rule is not None:
        return Declared(rule)
    return next((family for family in FAMILIES if family.matches(module)), None)


def supported_layers() -> str:
    """The layers an error for an unknown module lists, read from ``FAMILIES`` (so a new family
    is never missing from it); the element-wise ones, dozens of them, as a count."""
    named = [kind.__name__ for family in FAMILIES if not isinstance(family, Passthrough) for kind in family.types]
    element_wise = sum(len(family.types) for family in FAMILIES if isinstance(family, Passthrough))
    return (
        f"{', '.join(named)}, {element_wise} element-wise layers (activations, pooling, dropout, ...), "
        "and modules a plugin declares with pat_ray_register_layers"
    )


def kept_whole(module: nn.Module) -> bool:
    """A torch.nn layer in no family: its forward reads only its inputs and its own weights,
    so keeping its inputs and outputs whole makes it safe to prune everything around it."""
    family = family_of(module)
    if family is not None:
        return family.whole_unless_followed
    return str(getattr(type(module).forward, "__module__", "")).startswith("torch.nn.")


def trace_layer(builder: GroupBuilder, node: fx.Node, layout: Layout, name: str | None = None) -> Layout | None:
    """One call of a module (``name``: the module whose weights ``node`` applies, when the node
    is a functional call inside its forward). A module with weights called again (weights
    shared between two places) must keep the same channels in both: its inputs and outputs are
    coupled with the first call's, and only its MACs count again (its parameters exist once)."""
    name = name or str(node.target)
    module = builder.model.get_submodule(name)
    where = f"module {name!r} ({type(module).__name__})"
    family = family_of(module)
    if family is None:
        raise UnsupportedModelError(
            f"{where}: pat_ray does not know how this module treats channels; supported: {supported_layers()}"
        )
    terms_before = builder.term_count
    result = family.trace(LayerCall(builder, node, name, module, layout, where))
    if _weights_made_at_call_time(module):  # surgery would cut the weight, not what it is made of
        for kept in (layout, result):
            if kept is not None:
                builder.pin(kept)
    first = builder.call_of(name)
    if first is None or not any(True for _ in module.parameters()):
        builder.record_call(name, Call(layout, result))
        return result
    where = f"{where}, called again"
    builder.unify(first.inp, layout, where)
    if first.out is not None and result is not None:
        builder.unify(first.out, result, where)
    builder.count_again(since=terms_before)
    return result


def _weights_made_at_call_time(module: nn.Module) -> bool:
    """A layer whose weight is computed from other tensors before each call: a parametrization
    (``parametrizations.spectral_norm`` / ``weight_norm``, whose vectors and magnitudes surgery
    does not slice) or a forward pre-hook (the older ``nn.utils.weight_norm``). Kept whole."""
    return parametrize.is_parametrized(module) or bool(module._forward_pre_hooks)


def followed_result(builder: GroupBuilder, node: fx.Node, layouts: dict[fx.Node, Traced]) -> Traced | None:
    """What the family of a ``kept_whole`` module's call can follow of it (the heads of an
    ``nn.MultiheadAttention``); None: the call is kept whole."""
    family = family_of(builder.model.get_submodule(str(node.target)))
    return family.follow(builder, node, layouts) if family is not None else None


def kept_whole_result(builder: GroupBuilder, node: fx.Node, inputs: list[Layout]) -> Traced:
    """A ``kept_whole`` module's call: its inputs pinned, each tensor it returns new fixed
    channels on dim 1 (like a model input), its weights counted as they are."""
    name = str(node.target)
    for layout in inputs:
        builder.pin(layout)
    if builder.call_of(name) is None:
        builder.record_call(name, Call(Layout(()), None))
        builder.count_weights_as_they_are(name)
    builder.count_fixed_macs(node.name, node.meta.get(PRODUCT_MACS, 0))  # its projections and products
    return fixed_result(builder, node)


def fixed_result(builder: GroupBuilder, node: fx.Node) -> Traced:
    """New fixed channels for every tensor ``node`` returns (nested tuples alike), on dim 1."""
    shape = shape_of(node)
    return _fixed(builder, f"<{node.name}>", shape if shape is not None else piece_shapes(node))


def _fixed(builder: GroupBuilder, label: str, shapes: object) -> Traced:
    if isinstance(shapes, list):
        return tuple(_fixed(builder, f"{label}[{i}]", s) for i, s in enumerate(shapes))
    if isinstance(shapes, tuple) and len(shapes) > 1:
        return builder.fixed_group(shapes[1], label)
    return None
