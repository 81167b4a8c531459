"""Layers without weights: activations, pooling (with its indices, and unpooling by them),
dropout, padding, flatten (channel i stays channel i); channel shuffles and pixel shuffles
(channels change places, so their input is kept whole); GLU (two halves of the channels, gated
pairwise); unfold / fold (each channel over its patch positions); softmax-like layers (along the
channels every output reads every channel: kept whole too)."""

from __future__ import annotations

from torch import nn

from pat_ray.tracer.layers.family import LayerCall, LayerFamily
from pat_ray.tracer.layers.registry import layer_family
from pat_ray.tracer.layout import Layout, Pieces
from pat_ray.tracer.ops.elementwise import mixed_along
from pat_ray.tracer.ops.shape import reordered_layout, reshape_layout
from pat_ray.tracer.ops.splits import gated_halves
from pat_ray.tracer.ops.unpool import unpooled, with_indices
from pat_ray.tracer.ops.windows import folded, unfolded

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
)


@layer_family(*PASSTHROUGH_MODULES)
class Passthrough(LayerFamily):
    """Channel i at position i, no per-channel parameters. A max pooling that also returns
    where each maximum came from (``return_indices=True``) returns both with the input's channels."""

    def trace(self, call: LayerCall) -> Layout:
        return call.layout

    def trace_pieces(self, call: LayerCall, shapes: list[tuple[int, ...] | None]) -> Pieces | None:
        return with_indices(call.layout, call.in_shape, shapes)


@layer_family(nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d)
class Unpool(LayerFamily):
    """``nn.MaxUnpool2d(values, indices)``: followed as ``F.max_unpool2d``."""

    tensor_inputs = 2

    def trace(self, call: LayerCall) -> Layout:
        return unpooled(call.builder, call.layout, call.others[0] if call.others else None, call.where)


@layer_family(nn.Flatten, nn.Unflatten)
class Flatten(LayerFamily):
    """``nn.Flatten`` / ``nn.Unflatten``: followed like the ``flatten`` / ``view`` they run."""

    def trace(self, call: LayerCall) -> Layout:
        return reshape_layout(call.builder, call.node, call.layout, call.where)


@layer_family(nn.ChannelShuffle, nn.PixelShuffle, nn.PixelUnshuffle)
class Reordering(LayerFamily):
    """Channels move to other positions (or axes): the input is kept whole."""

    def trace(self, call: LayerCall) -> Layout:
        return reordered_layout(call.builder, call.node, call.layout, call.where)


@layer_family(nn.Unfold)
class Im2col(LayerFamily):
    """``nn.Unfold``: followed as ``F.unfold`` (each channel over its patch positions)."""

    def trace(self, call: LayerCall) -> Layout:
        return unfolded(call.builder, call.node, call.layout, call.where)


@layer_family(nn.Fold)
class Col2im(LayerFamily):
    """``nn.Fold``: followed as ``F.fold`` (the patch positions summed back per channel)."""

    def trace(self, call: LayerCall) -> Layout:
        return folded(call.builder, call.node, call.layout, call.where)


@layer_family(nn.GLU)
class GatedHalves(LayerFamily):
    """``nn.GLU``: followed as ``F.glu``, channel ``i`` of one half gating channel ``i`` of the other."""

    def trace(self, call: LayerCall) -> Layout:
        assert isinstance(call.module, nn.GLU)
        return gated_halves(call.builder, call.node, call.layout, call.module.dim, call.where)


@layer_family(nn.Softmax, nn.LogSoftmax, nn.Softmin)
class MixingAlongDim(LayerFamily):
    """Softmax-like layers mix along their ``dim``, as the functions they run: over the
    channels none may go; over another dim (an attention's ``nn.Softmax(dim=-1)`` over tokens)
    channel ``i`` stays channel ``i``. ``dim=None`` (softmax's legacy implicit dim) keeps them."""

    def trace(self, call: LayerCall) -> Layout:
        dim = getattr(call.module, "dim", None)
        return mixed_along(call.builder, call.layout, dim, len(call.in_shape))


@layer_family(nn.Softmax2d, nn.LocalResponseNorm)
class ChannelMixing(LayerFamily):
    """Every output reads all channels, without parameters: the input is kept whole."""

    def trace(self, call: LayerCall) -> Layout:
        call.builder.pin(call.layout)
        return call.layout
