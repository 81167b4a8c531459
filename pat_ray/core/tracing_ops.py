"""How the tracer treats each known op's channel dimension.

Kept apart from the tracer so that supporting a new op is one line in one table. An op
missing from every table stops the trace with an error naming it: extending these tables
is only safe for ops whose channel semantics are exactly the ones the table says.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import stochastic_depth

# Modules that keep channel i at position i and have no per-channel parameters.
PASSTHROUGH_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Mish,
    nn.ELU,
    nn.SELU,
    nn.Hardtanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Upsample,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReflectionPad3d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.ReplicationPad3d,
    nn.CircularPad1d,
    nn.CircularPad2d,
    nn.CircularPad3d,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
    nn.LPPool1d,
    nn.LPPool2d,
    nn.FractionalMaxPool2d,
    nn.FractionalMaxPool3d,
    nn.Softplus,
    nn.Softsign,
    nn.LogSigmoid,
    nn.CELU,
    nn.Tanhshrink,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Threshold,
    nn.RReLU,
    nn.Flatten,
    nn.Unflatten,
)

# Modules that mix all channels of their input without parameters: the input is kept whole.
CHANNEL_PINNING_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmax2d, nn.Softmin, nn.LocalResponseNorm)

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
    stochastic_depth,
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

# Elementwise ops between tensors: operands that vary over channels are coupled.
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

# Ops that change the shape; allowed only as a flatten of (N, C, ...) into (N, C*...).
RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape}
RESHAPE_METHODS = {"flatten", "view", "reshape"}

# Reductions that keep channels when they reduce only spatial dimensions.
# Over the channel axis they consume the channels (``core/reductions.py``).
REDUCTION_FUNCTIONS = {
    torch.mean,
    torch.sum,
    torch.amax,
    torch.amin,
    torch.prod,
    torch.std,
    torch.var,
    torch.logsumexp,
    torch.nansum,
    torch.nanmean,
    torch.argmax,
    torch.argmin,
}
REDUCTION_METHODS = set("mean sum amax amin prod std var logsumexp nansum nanmean argmax argmin".split())
# Norms over listed dims: a reduction whose ``dim`` comes after ``p`` (``x.norm(2, 1, True)``).
NORM_FUNCTIONS = {torch.norm, torch.linalg.vector_norm}
NORM_METHODS = {"norm"}
# ``max`` / ``min``: element-wise with a second tensor, a reduction without (with a dim: a tuple).
MINMAX_FUNCTIONS = {torch.max, torch.min}
MINMAX_METHODS = {"max", "min"}

# Ops that return a tuple of tensors; the tracer follows each piece (``core/tuples.py``).
# Value: the position of their ``dim`` argument (after the tensor) when given positionally.
MULTI_OUTPUT_FUNCTIONS = {torch.split: 2, torch.chunk: 2, torch.tensor_split: 2, torch.unbind: 1}
MULTI_OUTPUT_METHODS = {"split": 2, "chunk": 2, "tensor_split": 2, "unbind": 1}

# Matrix products (``core/contractions.py``).
MATMUL_FUNCTIONS = {operator.matmul, torch.matmul, torch.bmm, torch.mm}
MATMUL_METHODS = {"matmul", "bmm", "mm"}

# Ops that move values along the listed dims (``flip``, ``roll``): channels stay unless those include theirs.
SHIFT_FUNCTIONS = {torch.flip, torch.roll}
SHIFT_METHODS = {"flip", "roll"}

# Ops that tile a tensor (``x.repeat(1, 2, 1, 1)``): the channels repeat like a ``cat`` of copies.
REPEAT_FUNCTIONS = {torch.tile}
REPEAT_METHODS = {"repeat", "tile"}

# Ops that make a new tensor of a given size (``torch.zeros(n, 8, h, w)``, ``x.new_zeros(...)``).
CREATION_FUNCTIONS = {torch.zeros, torch.ones, torch.full, torch.empty, torch.rand, torch.randn}
CREATION_METHODS = {"new_zeros", "new_ones", "new_full", "new_empty"}

# Aliases of ``torch.cat``.
CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}

# Ops that reorder a tensor's axes: the channels move with theirs (to the last one, channels-last).
PERMUTE_FUNCTIONS = {torch.permute, torch.transpose, torch.swapaxes, torch.swapdims}
PERMUTE_METHODS = {"permute", "transpose", "swapaxes", "swapdims"}

# Ops that add or remove size-1 axes (``unsqueeze``, ``squeeze``) or stack tensors on a new one.
AXIS_FUNCTIONS = {torch.unsqueeze, torch.squeeze}
AXIS_METHODS = {"unsqueeze", "squeeze", "unsqueeze_", "squeeze_"}

# Functions that mix all channels of their input without parameters: the input is kept whole.
SOFTMAX_FUNCTIONS = {F.softmax, F.log_softmax, torch.softmax, F.softmin, F.normalize, F.local_response_norm}

# Ops that move channels to other positions: their input is kept whole (``reordered_layout``).
REORDERING_FUNCTIONS = {torch.channel_shuffle, torch.native_channel_shuffle, torch.pixel_shuffle, torch.pixel_unshuffle}
REORDERING_MODULES = (nn.ChannelShuffle, nn.PixelShuffle, nn.PixelUnshuffle, nn.GLU)

_FUNCTION_KINDS = (
    ("pass", PASSTHROUGH_FUNCTIONS),
    ("binary", BINARY_FUNCTIONS),
    ("reshape", RESHAPE_FUNCTIONS),
    ("reduce", REDUCTION_FUNCTIONS),
    ("minmax", MINMAX_FUNCTIONS),
    ("norm", NORM_FUNCTIONS),
    ("shift", SHIFT_FUNCTIONS),
    ("repeat", REPEAT_FUNCTIONS),
    ("sample", {F.grid_sample}),
    ("matmul", MATMUL_FUNCTIONS),
    ("einsum", {torch.einsum}),
    ("layer", {F.conv1d, F.conv2d, F.conv3d, F.linear}),
    ("create", CREATION_FUNCTIONS),
    ("cat", CAT_FUNCTIONS),
    ("permute", PERMUTE_FUNCTIONS),
    ("axes", AXIS_FUNCTIONS),
    ("stack", {torch.stack}),
    ("pad", {F.pad}),
    ("reorder", REORDERING_FUNCTIONS),
    ("softmax", SOFTMAX_FUNCTIONS),
    ("layer_norm", {F.layer_norm}),
    ("getitem", {operator.getitem}),
)
_METHOD_KINDS = (
    ("pass", PASSTHROUGH_METHODS),
    ("binary", BINARY_METHODS),
    ("reshape", RESHAPE_METHODS),
    ("reduce", REDUCTION_METHODS),
    ("minmax", MINMAX_METHODS),
    ("norm", NORM_METHODS),
    ("shift", SHIFT_METHODS),
    ("repeat", REPEAT_METHODS),
    ("matmul", MATMUL_METHODS),
    ("create", CREATION_METHODS),
    ("permute", PERMUTE_METHODS),
    ("axes", AXIS_METHODS),
)


def op_kind(op: str, target: object) -> str | None:
    """Which table a ``call_function`` / ``call_method`` node's target is in (None: in none)."""
    tables = _METHOD_KINDS if op == "call_method" else _FUNCTION_KINDS
    return next((kind for kind, targets in tables if target in targets), None)
