"""Members and costs of an attention layer with a packed q/k/v projection, which the layer
families of ``nn.MultiheadAttention`` and Swin's window attention share.

The projection's rows are q, k and v one after the other, cut into heads (one group, a
channel per head); its input columns follow the channels that flow in; the output
projection's input columns hold the heads (``head_dim`` each), its outputs are new channels;
the two products between activations count per head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from pat_ray.tracer.layout import Layout, Term
from pat_ray.tracer.ops.products import attention_products
from pat_ray.tracer.state import GroupBuilder


@dataclass(frozen=True)
class PackedAttention:
    """Where one attention layer's weights are and how much each runs, for one sample."""

    qkv: str  # the module holding the packed projection (rows q, k, v)
    rows: int  # 3 * heads * head_dim
    qkv_bias: bool
    proj: str  # the output projection
    proj_out: int
    proj_bias: bool
    heads: int
    head_dim: int
    groups: int  # attention runs this many times per sample (batch entries, windows)
    tokens: int  # queries (= keys) per run


def add_packed_attention(
    builder: GroupBuilder, node: fx.Node, attention: PackedAttention, inp: Layout
) -> tuple[Layout, Layout] | None:
    """The heads and the output channels of the layer ``node`` calls with ``inp`` flowing in;
    None (nothing recorded) where its channels cannot be cut into heads."""
    axis = inp.axis
    packed = builder.new_group(attention.rows, attention.qkv, axis=axis)
    heads = builder.cut_into_heads(packed, attention.heads, attention.head_dim, f"{node.target}/heads", node.name)
    if heads is None:
        return None
    positions = attention.groups * attention.tokens
    builder.add_member(attention.qkv, "in", inp, 1)
    builder.add_member(attention.qkv, "out", packed, 0)
    builder.add_term(
        Term(
            module=attention.qkv,
            out=packed,
            inp=inp,
            macs_per_pair=positions,
            params_per_pair=1,
            params_per_out=int(attention.qkv_bias),
        )
    )
    per_head = (attention.groups, attention.heads, attention.tokens, attention.head_dim)
    macs = positions * attention.tokens * attention.head_dim  # of each product, per head
    for product, timing in zip(("scores", "mix"), attention_products(per_head, per_head, per_head, 1, False)):
        builder.add_term(
            Term(module=f"<{node.name}:{product}>", out=heads, macs_per_pair=macs, is_layer=False, product=timing)
        )
    merged = Layout(heads.groups, attention.head_dim, axis)
    out = builder.new_group(attention.proj_out, attention.proj, pinned=attention.proj in builder.excluded, axis=axis)
    builder.add_member(attention.proj, "in", merged, 1)
    builder.add_member(attention.proj, "out", out, 0)
    builder.add_term(
        Term(
            module=attention.proj,
            out=out,
            inp=merged,
            macs_per_pair=positions,
            params_per_pair=1,
            params_per_out=int(attention.proj_bias),
        )
    )
    return Layout(heads.groups, 1, axis), out
