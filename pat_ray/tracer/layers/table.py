"""Every layer family, registered, and the tracer's step for one call of a module.

Importing this module imports each family module, whose ``@layer_family`` decorators fill
``registry.LAYERS``. ``family_of`` is how the tracer, surgery, the FLOPs count and the latency
probe find the family of a module: a layer a plugin declared (``declared.py``, exact class)
first, then the registry (most specific class first). A ``torch.nn`` layer in no family (LSTM,
GRU...) is ``kept_whole``: its inputs and outputs never change, so everything around it
can still be pruned. Any other module without a family is traced into (its forward's ops).
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layers import (  # noqa: F401  (register their families)
    batch_norm,
    bilinear,
    conv,
    embedding,
    group_norm,
    layer_norm,
    linear,
    multihead,
    prelu,
    rms_norm,
    stateless,
    transposed,
)
from pat_ray.tracer.layers.declared import Declared, rule_for
from pat_ray.tracer.layers.family import LayerCall, LayerFamily
from pat_ray.tracer.layers.registry import LAYERS
from pat_ray.tracer.layout import Call, Layout, Pieces, Traced
from pat_ray.tracer.nodes import PRODUCT_MACS, piece_shapes, shape_of
from pat_ray.tracer.state import GroupBuilder


def family_of(module: nn.Module) -> LayerFamily | None:
    """The family that knows ``module``'s layers (None: no family does)."""
    rule = rule_for(module)
    if rule is not None:
        return Declared(rule)
    return LAYERS.family_of(module)


def supported_layers() -> str:
    """The layers an error for an unknown module lists, read from the registry (so a new
    family is never missing from it); the element-wise ones, dozens of them, as a count."""
    families = LAYERS.families()
    passthrough = [f for f in families if isinstance(f, stateless.Passthrough)]
    named = [kind.__name__ for family in families if family not in passthrough for kind in family.types]
    element_wise = sum(len(family.types) for family in passthrough)
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


def trace_layer(
    builder: GroupBuilder,
    node: fx.Node,
    layout: Layout,
    name: str | None = None,
    others: tuple[Layout | None, ...] = (),
) -> Layout | None:
    """One call of a module (``name``: the module whose weights ``node`` applies, when the node
    is a functional call inside its forward; ``others``: the layouts of its later inputs). A
    module with weights called again (weights shared between two places) must keep the same
    channels in both: its inputs and outputs are coupled with the first call's, and only its
    MACs count again (its parameters exist once)."""
    name = name or str(node.target)
    module = builder.model.get_submodule(name)
    where = f"module {name!r} ({type(module).__name__})"
    family = family_of(module)
    if family is None:
        raise UnsupportedModelError(
            f"{where}: pat_ray does not know how this module treats channels; supported: {supported_layers()}"
        )
    terms_before = builder.term_count
    for unread in others[family.tensor_inputs - 1 :]:  # a second tensor the family does not follow
        if unread is not None:
            builder.pin(unread)
    others = others[: family.tensor_inputs - 1]
    result = family.trace(LayerCall(builder, node, name, module, layout, where, others))
    if _weights_made_at_call_time(module):  # surgery would cut the weight, not what it is made of
        for kept in (layout, *others, result):
            if kept is not None:
                builder.pin(kept)
    first = builder.call_of(name)
    if first is None or not any(True for _ in module.parameters()):
        builder.record_call(name, Call(layout, result, others))
        return result
    where = f"{where}, called again"
    for before, now in zip((first.inp, first.out, *first.others), (layout, result, *others), strict=False):
        if before is not None and now is not None:
            builder.unify(before, now, where)
    builder.count_again(since=terms_before)
    return result


def trace_layer_pieces(builder: GroupBuilder, node: fx.Node, layout: Layout) -> Pieces | None:
    """A module call that returns several tensors: its family's layout for each (None: the
    family cannot tell; such a layer has no weights, so nothing is recorded for it)."""
    name = str(node.target)
    module = builder.model.get_submodule(name)
    family = family_of(module)
    if family is None:
        return None
    where = f"module {name!r} ({type(module).__name__})"
    shapes = piece_shapes(node) or []
    shaped = [s if isinstance(s, tuple) else None for s in shapes]
    return family.trace_pieces(LayerCall(builder, node, name, module, layout, where), shaped)


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
