"""torchvision's Swin window attention (``ShiftedWindowAttention`` and its V2), with whole heads
and the width of what flows in pruned.

The module hands its weights to ``shifted_window_attention``, which reads the heads' width
from the input's (``C // num_heads``) and so ties the two together. The tracer reads the
module as one layer: ``qkv``'s rows cut into heads like any fused projection, its input
columns and ``proj``'s outputs with the residual stream, the heads' slices of the position
bias table (V1) or of the bias MLP's last layer and the logit scale (V2). After surgery the
module becomes ``NarrowedSwinAttention``: the same module and parameters, whose forward
computes torchvision's window attention (padding, cyclic shift and its mask, relative position
bias, V2's cosine attention) with heads of their own width.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

from pat_ray.tracer.layers.family import LayerFamily
from pat_ray.tracer.layers.packed_attention import PackedAttention, add_packed_attention
from pat_ray.tracer.layers.registry import layer_family
from pat_ray.tracer.layout import AttributeSlot, Call, Layout, Term, Traced
from pat_ray.tracer.nodes import arg, shape_of
from pat_ray.tracer.state import GroupBuilder, HeadsConflict


@layer_family(ShiftedWindowAttention)  # V2 is a subclass
class SwinAttention(LayerFamily):
    whole_unless_followed = True

    def follow(self, builder: GroupBuilder, node: fx.Node, layouts: dict[fx.Node, Traced]) -> Traced | None:
        name = str(node.target)
        module = builder.model.get_submodule(name)
        assert isinstance(module, ShiftedWindowAttention)
        x = arg(node, 0, "x")
        layout, shape = layouts.get(x), shape_of(x)
        if not builder.cuts_whole_heads or name in builder.excluded:
            return None
        if not isinstance(layout, Layout) or shape is None:
            return None
        if len(shape) != 4 or layout.axis != 3 or layout.repeat != 1:
            return None
        if builder.call_of(name) is not None:
            raise HeadsConflict(f"module {name!r}: a window attention called twice")
        windows, tokens = _windows(shape, module.window_size)
        attention = PackedAttention(
            qkv=f"{name}.qkv",
            rows=module.qkv.out_features,
            qkv_bias=module.qkv.bias is not None,
            proj=f"{name}.proj",
            proj_out=module.proj.out_features,
            proj_bias=module.proj.bias is not None,
            heads=module.num_heads,
            head_dim=module.qkv.out_features // 3 // module.num_heads,
            groups=windows,
            tokens=tokens,
        )
        added = add_packed_attention(builder, node, attention, layout)
        if added is None:
            return None
        cut, out = added
        _position_bias(builder, name, module, cut)
        builder.add_size_attribute(AttributeSlot(name, "num_heads", cut.groups[0], 1))
        builder.record_call(name, Call(layout, out))
        return out

    def resized(self, module: nn.Module) -> None:
        if isinstance(module, ShiftedWindowAttentionV2):
            module.__class__ = NarrowedSwinAttentionV2
        elif isinstance(module, ShiftedWindowAttention):
            module.__class__ = NarrowedSwinAttention


def _windows(shape: tuple[int, ...], window: list[int]) -> tuple[int, int]:
    """(windows, tokens per window) of one sample's map, padded to whole windows."""
    rows, columns = -(-shape[1] // window[0]), -(-shape[2] // window[1])
    return shape[0] * rows * columns, window[0] * window[1]


def _position_bias(builder: GroupBuilder, name: str, module: ShiftedWindowAttention, heads: Layout) -> None:
    """Each head's relative position bias goes with it: V1's table column, V2's logit scale and
    the output of the MLP that computes its bias (whose 2 -> 512 layer stays as it is)."""
    if not isinstance(module, ShiftedWindowAttentionV2):
        table = f"{name}.relative_position_bias_table"
        builder.slice_param(table, 1, heads, name)
        return
    builder.slice_param(f"{name}.logit_scale", 0, heads, name)
    first, last = module.cpb_mlp[0], module.cpb_mlp[2]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
    coordinates = math.prod(module.relative_coords_table.shape[:-1])
    inputs = builder.fixed_group(first.in_features, f"<{name}.cpb_mlp input>", axis=3)
    hidden = builder.fixed_group(first.out_features, f"{name}.cpb_mlp.0", axis=3)
    builder.add_term(
        Term(
            module=f"{name}.cpb_mlp.0",
            out=hidden,
            inp=inputs,
            macs_per_pair=coordinates,
            params_per_pair=1,
            params_per_out=int(first.bias is not None),
        )
    )
    builder.add_member(f"{name}.cpb_mlp.2", "out", heads, 0)
    builder.add_term(
        Term(
            module=f"{name}.cpb_mlp.2",
            out=heads,
            inp=hidden,
            macs_per_pair=coordinates,
            params_per_pair=1,
            params_per_out=int(last.bias is not None),
        )
    )


class NarrowedSwinAttention(ShiftedWindowAttention):
    """A pruned ``ShiftedWindowAttention``: ``num_heads`` heads of ``qkv.out_features / 3 /
    num_heads`` over inputs of any width; what torchvision's forward computes."""

    def forward(self, x: Tensor) -> Tensor:
        return windowed_attention(self, x, self.get_relative_position_bias(), None)


class NarrowedSwinAttentionV2(ShiftedWindowAttentionV2):
    """A pruned ``ShiftedWindowAttentionV2`` (cosine attention, biases from an MLP)."""

    def forward(self, x: Tensor) -> Tensor:
        return windowed_attention(self, x, self.get_relative_position_bias(), self.logit_scale)


def windowed_attention(module: ShiftedWindowAttention, x: Tensor, bias: Tensor, logit_scale: Tensor | None) -> Tensor:
    """Multi-head self-attention within windows of a (B, H, W, C) map, shifted cyclically by
    ``module.shift_size`` with a mask that keeps pixels from attending across the seam."""
    batch, height, width, _ = x.shape
    (wh, ww), (sh, sw) = module.window_size, module.shift_size
    x = F.pad(x, (0, 0, 0, (-width) % ww, 0, (-height) % wh))
    _, ph, pw, channels = x.shape
    shift = (0 if wh >= ph else sh, 0 if ww >= pw else sw)  # a window covering the map is not shifted
    if any(shift):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = _partition(x, (wh, ww))  # (B * windows, tokens, C)
    heads = module.num_heads
    inner = module.qkv.out_features // 3
    qkv_bias = module.qkv.bias
    if logit_scale is not None and qkv_bias is not None:  # V2 has no key bias
        qkv_bias = torch.cat((qkv_bias[:inner], torch.zeros_like(qkv_bias[inner : 2 * inner]), qkv_bias[2 * inner :]))
    qkv = F.linear(windows, module.qkv.weight, qkv_bias)
    q, k, v = qkv.reshape(*windows.shape[:2], 3, heads, inner // heads).permute(2, 0, 3, 1, 4)
    if logit_scale is not None:
        scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        scores = scores * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        scores = (q * (inner // heads) ** -0.5) @ k.transpose(-2, -1)
    scores = scores + bias
    if any(shift):
        mask = _seam_mask((ph, pw), (wh, ww), shift, scores.dtype, scores.device)  # (windows, tokens, tokens)
        scores = (scores.view(batch, mask.shape[0], heads, *mask.shape[1:]) + mask[None, :, None]).flatten(0, 1)
    weights = F.dropout(scores.softmax(dim=-1), p=module.attention_dropout, training=module.training)
    out = (weights @ v).transpose(1, 2).reshape(*windows.shape[:2], inner)
    out = F.dropout(F.linear(out, module.proj.weight, module.proj.bias), p=module.dropout, training=module.training)
    out = _merge(out, batch, (ph, pw), (wh, ww))
    if any(shift):
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    return out[:, :height, :width, :].contiguous()


def _partition(x: Tensor, window: tuple[int, int]) -> Tensor:
    batch, ph, pw, channels = x.shape
    grid = x.view(batch, ph // window[0], window[0], pw // window[1], window[1], channels)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], channels)


def _merge(windows: Tensor, batch: int, padded: tuple[int, int], window: tuple[int, int]) -> Tensor:
    (ph, pw), channels = padded, windows.shape[-1]
    grid = windows.view(batch, ph // window[0], pw // window[1], window[0], window[1], channels)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(batch, ph, pw, channels)


def _seam_mask(
    padded: tuple[int, int], window: tuple[int, int], shift: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """-100 between two pixels of a window that came from different regions of the unshifted
    map (the cyclic shift brought them together), 0 elsewhere: (windows, tokens, tokens)."""
    regions = torch.zeros(padded, dtype=dtype, device=device)
    bounds = [(0, size - win, size - s, size) for size, win, s in zip(padded, window, shift)]
    label = 0
    for top, bottom in zip(bounds[0][:-1], bounds[0][1:]):
        for left, right in zip(bounds[1][:-1], bounds[1][1:]):
            regions[top:bottom, left:right] = label
            label += 1
    labels = _partition(regions[None, :, :, None], window).squeeze(-1)  # (windows, tokens)
    differ = labels[:, None, :] != labels[:, :, None]
    return torch.zeros_like(differ, dtype=dtype).masked_fill(differ, -100.0)
