"""Element-wise ops: on one tensor (activations, ``clamp``, ``exp``: channel i stays channel
i), between tensors (``add``, ``mul``, ``where``: operands that vary over the channels are
coupled, a model parameter among them is sliced with them), ``max`` / ``min`` (element-wise
with a second tensor, a reduction without), ops that mix every channel (``softmax``: the input
is kept whole) and ``grid_sample`` (moves pixels, not channels).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layout import Layout
from pat_ray.tracer.nodes import (
    arg,
    known_shape,
    parameter_dim,
    shape_of,
    size_written_in_code,
)
from pat_ray.tracer.ops.call import OpCall
from pat_ray.tracer.ops.reductions import reduce_rule
from pat_ray.tracer.ops.registry import op_rule
from pat_ray.tracer.ops.shape import sizes_read_from_channels
from pat_ray.tracer.state import GroupBuilder

# Ops that keep channel i at position i and read no other tensor.
PASSTHROUGH_FUNCTIONS = {
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    F.relu6,
    F.leaky_relu,
    F.silu,
    F.gelu,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.mish,
    F.elu,
    F.selu,
    torch.sigmoid,
    F.sigmoid,
    torch.tanh,
    F.tanh,
    F.dropout,
    F.dropout2d,
    F.dropout1d,
    F.dropout3d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.interpolate,
    operator.neg,
    torch.neg,
    torch.clone,
    torch.abs,
    operator.pos,
    torch.clamp,
    torch.clip,
    torch.exp,
    torch.log,
    torch.sqrt,
    torch.rsqrt,
    torch.square,
    torch.erf,
    torch.sin,
    torch.cos,
    F.softplus,
    F.softsign,
    F.logsigmoid,
    F.celu,
    F.hardshrink,
    F.softshrink,
    F.tanhshrink,
    F.threshold,
    F.rrelu,
    F.lp_pool1d,
    F.lp_pool2d,
    torch.zeros_like,  # the *_like ops make a tensor as wide as their input
    torch.ones_like,
    torch.empty_like,
    torch.full_like,
    torch.rand_like,
    torch.randn_like,
    torch.sign,
    torch.floor,
    torch.ceil,
    torch.round,
    torch.trunc,
    torch.reciprocal,
    torch.log1p,
    torch.expm1,
    torch.log2,
    torch.tan,
    torch.atan,
    torch.logical_not,
    torch.isnan,
    torch.isfinite,
    torch.nan_to_num,
}
PASSTHROUGH_METHODS = set(
    "relu relu_ sigmoid sigmoid_ tanh contiguous clone float half bfloat16 to type_as neg abs detach type "
    "clamp clamp_ clip exp log sqrt rsqrt square erf sin cos expand hardtanh hardtanh_ sign floor ceil "
    "round reciprocal log1p expm1 zero_ fill_ logical_not nan_to_num bool long int double".split()
)

# Element-wise ops between tensors: operands that vary over channels are coupled.
BINARY_FUNCTIONS = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.maximum,
    torch.minimum,
    operator.pow,
    operator.ipow,
    torch.pow,
    operator.gt,
    operator.lt,
    operator.ge,
    operator.le,
    operator.eq,
    operator.ne,
    operator.floordiv,
    operator.mod,
    torch.gt,
    torch.lt,
    torch.ge,
    torch.le,
    torch.eq,
    torch.ne,
    torch.where,
    torch.lerp,
    torch.addcmul,
    torch.addcdiv,
    torch.logical_and,
    torch.logical_or,
    torch.fmax,
    torch.fmin,
    torch.remainder,
    torch.fmod,
    torch.atan2,
    torch.hypot,
}
BINARY_METHODS = set(
    "add add_ sub sub_ mul mul_ div div_ expand_as pow pow_ gt lt ge le eq ne where masked_fill "
    "masked_fill_ lerp lerp_ addcmul addcmul_ addcdiv addcdiv_ logical_and logical_or remainder fmod".split()
)

MINMAX_FUNCTIONS = {torch.max, torch.min}
MINMAX_METHODS = {"max", "min"}

# Functions that mix the values along one dim without parameters (softmax over tokens, a
# normalize over channels, a running sum): along the channel dim the input is kept whole;
# along another the channels pass. ``local_response_norm`` always mixes neighbouring channels.
MIXING_FUNCTIONS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, F.softmin, F.normalize}
MIXING_FUNCTIONS |= {torch.cumsum, torch.cumprod, torch.logcumsumexp}  # running totals along ``dim``
MIXING_METHODS = {"softmax", "log_softmax", "cumsum", "cumprod", "logcumsumexp"}
CHANNEL_MIXING_FUNCTIONS = {F.local_response_norm}

SAMPLE_FUNCTIONS = {F.grid_sample}


@op_rule("pass", functions=PASSTHROUGH_FUNCTIONS, methods=PASSTHROUGH_METHODS)
def unary_layout(builder: GroupBuilder, call: OpCall) -> Layout:
    """An op applied to each element alone: any other tensor among its arguments (a clamp's
    bounds, say) would need slicing with the channels, which a pass-through does not do."""
    node, layout = call.node, call.first_layout()
    extra = [a for a in node.all_input_nodes[1:] if shape_of(a) is not None]
    if extra and node.target not in ("type_as", "to"):  # these read only the other's dtype / device
        raise UnsupportedModelError(f"{call.where}: takes tensor {extra[0].name!r} besides its input")
    if size_written_in_code(builder.model, node, layout.axis):
        builder.pin(layout)  # ``gate.expand(n, 64, h, w)``
    sizes_read_from_channels(builder, node, layout, call.layouts, call.where)
    return layout


@op_rule("binary", functions=BINARY_FUNCTIONS, methods=BINARY_METHODS)
def binary_layout(builder: GroupBuilder, call: OpCall) -> Layout:
    """Element-wise op: operands that vary over the result's channels are coupled to them.

    Broadcasting aligns shapes from the right, so an operand's dim ``d`` lines up with the
    result's dim ``len(shape) - len(s) + d`` (a ``(C,)`` weight times an ``(N, C)`` activation
    varies over channels; times an ``(N, C, H, W)`` one it does not). A parameter that varies
    over channels is sliced with them; any other constant that does (Swin's attention mask, a
    scale viewed to a shape written in the code) keeps them whole."""
    node, shape, layouts, where = call.node, call.shape, call.layouts, call.where
    operands = [(a, known_shape(a, where)) for a in node.args if isinstance(a, fx.Node) and shape_of(a) is not None]
    traced = [(layouts.get(a), s) for a, s in operands]
    with_layout = [(lay, s) for lay, s in traced if isinstance(lay, Layout)]
    wide = [lay for lay, s in with_layout if s[lay.axis] == shape[len(shape) - len(s) + lay.axis]]
    axes = {len(shape) - len(s) + lay.axis for lay, s in with_layout if lay in wide}
    if len(axes) > 1:  # channels on different dims: a pinned operand's never change, so they give way
        wide = [lay for lay in wide if not builder.is_pinned(lay)] or wide[:1]
        axes = {len(shape) - len(s) + lay.axis for lay, s in with_layout if any(lay is w for w in wide)}
    if not wide or len(axes) != 1:
        raise UnsupportedModelError(
            f"{where}: no operand carries the result's channels"
            if not wide
            else f"{where}: its operands hold channels on different dims of the result ({sorted(axes)})"
        )
    channel_axis = axes.pop()
    for (operand, s), (lay, _) in zip(operands, traced):
        dim = len(s) - len(shape) + channel_axis  # the operand's dim that lines up with the channels
        extent = s[dim] if dim >= 0 else 1
        if isinstance(lay, Layout) and any(lay is w for w in wide):
            continue
        if extent == 1:
            if isinstance(lay, Layout):
                builder.pin(lay)  # broadcast across the result's channels: its own channels must stay
        elif lay is None and (source := parameter_dim(builder.model, operand, dim)) is not None:
            builder.slice_param(source[0], source[1], wide[0], where)
        elif lay is None or (isinstance(lay, Layout) and builder.is_pinned(lay)):
            # a constant (a mask, a scale viewed to sizes written in the code) or a fixed-width
            # axis meets the channels: they stay, so it stays right
            for w in wide:
                builder.pin(w)
        else:
            raise UnsupportedModelError(f"{where}: an operand's dim {dim} lines up with the result's channels")
    return builder.unify_all(wide, where)


@op_rule("minmax", functions=MINMAX_FUNCTIONS, methods=MINMAX_METHODS)
def minmax_layout(builder: GroupBuilder, call: OpCall) -> Layout | None:
    """``max(x, other)`` is element-wise; ``max(x)`` reduces (``max(x, dim)`` returns a tuple)."""
    if sum(shape_of(a) is not None for a in call.node.all_input_nodes) > 1:
        return binary_layout(builder, call)
    return reduce_rule(builder, call)


@op_rule("mixing", functions=MIXING_FUNCTIONS, methods=MIXING_METHODS)
def mixing_layout(builder: GroupBuilder, call: OpCall) -> Layout:
    """``softmax`` and kin along ``dim``: over the channels every output reads every channel, so
    none may go; over another dim (attention's softmax over tokens) channel i stays channel i."""
    layout = call.first_layout()
    given = arg(call.node, 2, "dim", 1) if call.node.target is F.normalize else arg(call.node, 1, "dim")
    return mixed_along(builder, layout, given, len(known_shape(call.node.args[0], call.where)))


def mixed_along(builder: GroupBuilder, layout: Layout, dim: object, ndim: int) -> Layout:
    """What mixing the values along ``dim`` leaves of ``layout`` (the functional op and its
    module form, ``nn.Softmax(dim=-1)``, alike): another dim's mixing keeps every channel where
    it was; mixing along the channels, or along a dim not known here, keeps them all."""
    if isinstance(dim, int) and dim % ndim != layout.axis and layout.repeat == 1:
        return layout
    builder.pin(layout)
    return layout


@op_rule("channel_mixing", functions=CHANNEL_MIXING_FUNCTIONS)
def channel_mixing_layout(builder: GroupBuilder, call: OpCall) -> Layout:
    """An op that mixes neighbouring channels (``local_response_norm``): none may go."""
    builder.pin(call.inputs[0])
    return call.inputs[0]


@op_rule("sample", functions=SAMPLE_FUNCTIONS)
def sample_layout(builder: GroupBuilder, call: OpCall) -> Layout:
    """``grid_sample``: moves pixels; the sampling grid must not shrink."""
    first = call.first_layout()
    grid = call.layouts.get(arg(call.node, 1, "grid"))
    if isinstance(grid, Layout) and not builder.is_pinned(grid):
        raise UnsupportedModelError(f"{call.where}: its sampling grid carries prunable channels")
    return first.on_dim1(call.where)


@op_rule("assign", functions={operator.setitem})
def assigned_layout(builder: GroupBuilder, call: OpCall) -> Layout:
    """``t[index] = v`` writes into ``t`` in place at positions the code names: neither ``t``'s
    channels nor ``v``'s may move."""
    for layout in call.inputs:
        builder.pin(layout)
    return call.inputs[0]
