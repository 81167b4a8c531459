"""``nn.MultiheadAttention`` in self-attention, with whole heads and its input width pruned.

Its packed ``in_proj_weight`` (3 * embed_dim, embed_dim) holds q, k and v one after the other:
head ``h`` is rows ``h*head_dim ... + head_dim - 1`` of each third, and ``out_proj``'s matching
input columns. The tracer makes those one group of heads (as for a reshape that cuts a fused
qkv projection into heads) and couples the in-projection's input columns with the channels
that flow in (the residual stream), ``out_proj``'s outputs with what they are added to.

torch's forward ties the heads' width to the input's (``head_dim = embed_dim // num_heads``,
and the query must be ``embed_dim`` wide), which pruning either one breaks; so surgery turns a
pruned module into ``NarrowedMultiheadAttention``, the same module (same parameters, same
state-dict keys) whose forward computes what torch's does with heads of ``head_dim`` and any
input width. Only self-attention with packed weights and no ``bias_k`` / ``add_zero_attn``,
whose averaged attention weights are not used, is followed so; any other call is kept whole.
"""

from __future__ import annotations

import operator
from collections.abc import Hashable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from pat_ray.tracer.layers.family import Cut, LayerFamily, Rewrite, chained, kept_indices, select
from pat_ray.tracer.layers.packed_attention import PackedAttention, add_packed_attention
from pat_ray.tracer.layers.registry import layer_family
from pat_ray.tracer.layout import Call, Layout, Traced
from pat_ray.tracer.nodes import arg, shape_of
from pat_ray.tracer.state import GroupBuilder, HeadsConflict


@layer_family(nn.MultiheadAttention)
class MultiheadAttention(LayerFamily):
    whole_unless_followed = True  # a call ``follow`` cannot read is kept whole, not refused
    timed = True  # its in-projection, as the Linear it is (out_proj and the products: their own terms)

    def rebuilt(self, module: nn.Module, n_in: int, n_out: int) -> nn.Module:
        assert isinstance(module, nn.MultiheadAttention)
        return nn.Linear(n_in, n_out, bias=module.in_proj_bias is not None)

    def timing_key(self, module: nn.Module, n_in: int, n_out: int) -> tuple[Hashable, ...]:
        assert isinstance(module, nn.MultiheadAttention)
        return ("Linear", module.in_proj_bias is not None, n_in, n_out)

    def reads_last_axis(self, module: nn.Module, shape: tuple[int, ...]) -> bool:
        return True

    def parameter_name(self, name: str) -> str:
        return {"weight": "in_proj_weight", "bias": "in_proj_bias"}.get(name, name)

    def follow(self, builder: GroupBuilder, node: fx.Node, layouts: dict[fx.Node, Traced]) -> Traced | None:
        """The (output, weights) layouts of a self-attention call, or None to keep it whole."""
        name = str(node.target)
        module = builder.model.get_submodule(name)
        assert isinstance(module, nn.MultiheadAttention)
        query = arg(node, 0, "query")
        layout, shape = layouts.get(query), shape_of(query)
        if not _followable(builder, node, module) or not isinstance(layout, Layout) or shape is None:
            return None
        if len(shape) != 3 or layout.axis != 2 or layout.repeat != 1:
            return None
        if builder.call_of(name) is not None:  # weights shared by two calls: both would have to prune alike
            raise HeadsConflict(f"module {name!r}: a MultiheadAttention called twice")
        tokens, batch = (shape[1], shape[0]) if module.batch_first else (shape[0], shape[1])
        attention = PackedAttention(
            qkv=name,
            rows=module.in_proj_weight.shape[0],
            qkv_bias=module.in_proj_bias is not None,
            proj=f"{name}.out_proj",
            proj_out=module.out_proj.out_features,
            proj_bias=module.out_proj.bias is not None,
            heads=module.num_heads,
            head_dim=module.head_dim,
            groups=batch,
            tokens=tokens,
        )
        added = add_packed_attention(builder, node, attention, layout)
        if added is None:
            return None
        out = added[1]
        builder.record_call(name, Call(layout, out))
        return (out, None)

    def shrink(self, module: nn.Module, cut: Cut, rewrite: Rewrite) -> None:
        assert isinstance(module, nn.MultiheadAttention)
        keep_rows = kept_indices(module.in_proj_weight.shape[0], cut.drop_out)
        keep_columns = kept_indices(module.in_proj_weight.shape[1], cut.drop_in)
        rewrite(module, "in_proj_weight", chained([select(0, keep_rows), select(1, keep_columns)]))
        rewrite(module, "in_proj_bias", select(0, keep_rows))
        module.num_heads = len(keep_rows) // (3 * module.head_dim)
        module.embed_dim = module.kdim = module.vdim = len(keep_columns)
        module.__class__ = NarrowedMultiheadAttention


def _followable(builder: GroupBuilder, node: fx.Node, module: nn.MultiheadAttention) -> bool:
    """Self-attention with packed weights, nothing appended to k and v, weights unused."""
    query, key, value = (arg(node, i, n) for i, n in enumerate(("query", "key", "value")))
    if not builder.cuts_whole_heads or str(node.target) in builder.excluded:
        return False
    if not query is key is value:
        return False
    if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
        return False
    return not any(user.target is operator.getitem and user.args[1] == 1 and user.users for user in node.users)


class NarrowedMultiheadAttention(nn.MultiheadAttention):
    """A pruned ``nn.MultiheadAttention``: ``num_heads`` heads of ``head_dim`` over inputs of
    ``embed_dim`` features, which no longer need to be equal. Same parameters as the module it
    was; what torch's forward computes for the same arguments (masks, dropout, weights)."""

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        tokens, batch, _ = query.shape
        keys, heads, inner = key.shape[0], self.num_heads, self.num_heads * self.head_dim
        if query is key is value:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            biases = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.split(inner)
            q, k, v = (
                F.linear(t, w, b) for t, w, b in zip((query, key, value), self.in_proj_weight.split(inner), biases)
            )
        q, k, v = (
            t.reshape(n, batch * heads, self.head_dim).transpose(0, 1) for t, n in ((q, tokens), (k, keys), (v, keys))
        )
        scores = torch.bmm(q * self.head_dim**-0.5, k.transpose(1, 2))
        mask = _additive_mask(attn_mask, key_padding_mask, is_causal, (batch, heads, tokens, keys), scores.dtype)
        if mask is not None:
            scores = scores + mask
        weights = F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        out = torch.bmm(weights, v).transpose(0, 1).reshape(tokens, batch, inner)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        out = out.transpose(0, 1) if self.batch_first else out
        if not need_weights:
            return out, None
        per_head = weights.view(batch, heads, tokens, keys)
        return out, per_head.mean(dim=1) if average_attn_weights else per_head


def _additive_mask(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    is_causal: bool,
    sizes: tuple[int, int, int, int],
    dtype: torch.dtype,
) -> Tensor | None:
    """torch's masks as one float mask added to the scores, shaped (batch * heads, tokens, keys):
    True in a boolean mask (and -inf in a float one) keeps a key out."""
    batch, heads, tokens, keys = sizes

    def additive(mask: Tensor) -> Tensor:
        if mask.dtype != torch.bool:
            return mask.to(dtype)
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))

    total = None
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(tokens, keys, dtype=torch.bool).triu(1)
    if attn_mask is not None:
        total = additive(attn_mask).expand(batch * heads, tokens, keys) if attn_mask.dim() == 2 else additive(attn_mask)
    if key_padding_mask is not None:
        padding = additive(key_padding_mask).view(batch, 1, 1, keys).expand(batch, heads, 1, keys)
        padding = padding.reshape(batch * heads, 1, keys)
        total = padding if total is None else total + padding
    return total
