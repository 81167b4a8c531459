"""The table of op kinds: which functions and methods each kind covers, and its rule.

The tracer looks a ``call_function`` / ``call_method`` node's target up here (``op_kind``) and
applies that kind's rule; a target in no kind stops the trace with an error naming it.
Extending a kind's targets is only safe for ops whose channel semantics are exactly the ones
its rule assumes. Adding a kind: an ``OpKind`` member, a rule in a module of ``ops/`` (or of
``layers/`` for a layer's functional form) and one entry in ``OPS``; CONTRIBUTING.md walks
through one. Ops that return several tensors (``split``, ``max(x, dim)``) are followed by
``ops/splits.py`` and ``ops/reductions.py`` on the tracer's tuple path.
"""

from __future__ import annotations

import operator
from collections.abc import Set
from dataclasses import dataclass
from enum import Enum

from pat_ray.tracer.layers.functional import FUNCTIONS as FUNCTIONAL_LAYERS
from pat_ray.tracer.layers.functional import functional_layer
from pat_ray.tracer.layers.functional_norms import FUNCTIONS as FUNCTIONAL_NORMS
from pat_ray.tracer.layers.functional_norms import functional_norm
from pat_ray.tracer.layers.layer_norm import LAYER_NORM_FUNCTIONS, functional_layer_norm
from pat_ray.tracer.ops import elementwise, interleave, joins, products, reductions, shape
from pat_ray.tracer.ops.call import OpRule


class OpKind(Enum):
    PASS = "pass"  # element-wise on one tensor
    BINARY = "binary"  # element-wise between tensors
    MINMAX = "minmax"  # max / min: binary with a second tensor, else a reduction
    MIXING = "mixing"  # every output reads every value along one dim (softmax)
    CHANNEL_MIXING = "channel_mixing"  # every output reads neighbouring channels (local response norm)
    ATTENTION = "attention"  # scaled dot-product attention
    TILE = "tile"  # a library function that lays its input's channels side by side (Swin's patch merging)
    SEALED = "sealed"  # a library function whose inside ties its input's width: kept whole
    SAMPLE = "sample"  # grid_sample
    RESHAPE = "reshape"
    AXES = "axes"  # unsqueeze / squeeze
    PERMUTE = "permute"
    GETITEM = "getitem"
    SHIFT = "shift"  # flip / roll
    REORDER = "reorder"  # channel / pixel shuffle
    REDUCE = "reduce"
    NORM = "norm"  # torch.norm: a reduction with ``p`` before ``dim``
    MATMUL = "matmul"
    EINSUM = "einsum"
    CAT = "cat"
    STACK = "stack"
    PAD = "pad"
    REPEAT = "repeat"
    CREATE = "create"  # a tensor made from a size
    LAYER = "layer"  # F.conv* / F.linear inside a layer's forward
    LAYER_NORM = "layer_norm"  # F.layer_norm inside a LayerNorm's forward
    INTERLEAVE = "interleave"  # repeat_interleave
    NORM_CALL = "norm_call"  # F.batch_norm / instance_norm / group_norm inside a norm layer's forward


@dataclass(frozen=True)
class OpFamily:
    """The targets of one op kind and its rule. ``needs_input``: without a traced tensor among
    its arguments the op carries no channels (shape arithmetic) and is skipped; an op that
    makes a tensor from a size runs its rule anyway."""

    functions: Set[object]
    methods: Set[str]
    rule: OpRule
    needs_input: bool = True


OPS: dict[OpKind, OpFamily] = {
    OpKind.PASS: OpFamily(elementwise.PASSTHROUGH_FUNCTIONS, elementwise.PASSTHROUGH_METHODS, elementwise.unary_layout),
    OpKind.BINARY: OpFamily(elementwise.BINARY_FUNCTIONS, elementwise.BINARY_METHODS, elementwise.binary_layout),
    OpKind.RESHAPE: OpFamily(shape.RESHAPE_FUNCTIONS, shape.RESHAPE_METHODS, shape.reshape_rule),
    OpKind.REDUCE: OpFamily(reductions.REDUCTION_FUNCTIONS, reductions.REDUCTION_METHODS, reductions.reduce_rule),
    OpKind.MINMAX: OpFamily(elementwise.MINMAX_FUNCTIONS, elementwise.MINMAX_METHODS, elementwise.minmax_layout),
    OpKind.NORM: OpFamily(reductions.NORM_FUNCTIONS, reductions.NORM_METHODS, reductions.norm_rule),
    OpKind.SHIFT: OpFamily(shape.SHIFT_FUNCTIONS, shape.SHIFT_METHODS, shape.shift_rule),
    OpKind.REPEAT: OpFamily(joins.REPEAT_FUNCTIONS, joins.REPEAT_METHODS, joins.repeat_rule),
    OpKind.TILE: OpFamily(joins.TILING_FUNCTIONS, set(), joins.tiling_rule),
    OpKind.SAMPLE: OpFamily(elementwise.SAMPLE_FUNCTIONS, set(), elementwise.sample_layout),
    OpKind.MATMUL: OpFamily(products.MATMUL_FUNCTIONS, products.MATMUL_METHODS, products.matmul_rule),
    OpKind.EINSUM: OpFamily(products.EINSUM_FUNCTIONS, set(), products.einsum_rule),
    OpKind.LAYER: OpFamily(FUNCTIONAL_LAYERS, set(), functional_layer),
    OpKind.CREATE: OpFamily(joins.CREATION_FUNCTIONS, joins.CREATION_METHODS, joins.created_rule, needs_input=False),
    OpKind.CAT: OpFamily(joins.CAT_FUNCTIONS, set(), joins.cat_rule),
    OpKind.PERMUTE: OpFamily(shape.PERMUTE_FUNCTIONS, shape.PERMUTE_METHODS, shape.permute_rule),
    OpKind.AXES: OpFamily(shape.AXIS_FUNCTIONS, shape.AXIS_METHODS, shape.reshape_rule),
    OpKind.STACK: OpFamily(joins.STACK_FUNCTIONS, set(), joins.stack_rule),
    OpKind.PAD: OpFamily(joins.PAD_FUNCTIONS, set(), joins.pad_rule),
    OpKind.REORDER: OpFamily(shape.REORDERING_FUNCTIONS, set(), shape.reorder_rule),
    OpKind.MIXING: OpFamily(elementwise.MIXING_FUNCTIONS, elementwise.MIXING_METHODS, elementwise.mixing_layout),
    OpKind.CHANNEL_MIXING: OpFamily(elementwise.CHANNEL_MIXING_FUNCTIONS, set(), elementwise.channel_mixing_layout),
    OpKind.ATTENTION: OpFamily(products.ATTENTION_FUNCTIONS, set(), products.attention_rule),
    OpKind.SEALED: OpFamily(elementwise.SEALED_FUNCTIONS, set(), elementwise.sealed_layout),
    OpKind.LAYER_NORM: OpFamily(LAYER_NORM_FUNCTIONS, set(), functional_layer_norm),
    OpKind.GETITEM: OpFamily({operator.getitem}, set(), shape.getitem_rule),
    OpKind.NORM_CALL: OpFamily(FUNCTIONAL_NORMS, set(), functional_norm),
    OpKind.INTERLEAVE: OpFamily(
        interleave.INTERLEAVE_FUNCTIONS, interleave.INTERLEAVE_METHODS, interleave.interleave_rule
    ),
}


def _by_target() -> tuple[dict[object, OpKind], dict[str, OpKind]]:
    """Target -> kind, the first kind in ``OPS`` order winning where two list one target."""
    functions: dict[object, OpKind] = {}
    methods: dict[str, OpKind] = {}
    for kind, family in OPS.items():
        for function in family.functions:
            functions.setdefault(function, kind)
        for method in family.methods:
            methods.setdefault(method, kind)
    return functions, methods


_FUNCTIONS, _METHODS = _by_target()


def op_kind(op: str, target: object) -> OpKind | None:
    """The kind of a ``call_function`` / ``call_method`` node's target (None: no kind knows it)."""
    if op == "call_method":
        return _METHODS.get(target) if isinstance(target, str) else None
    try:
        return _FUNCTIONS.get(target)
    except TypeError:  # an unhashable target
        return None
