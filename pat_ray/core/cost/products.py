"""Multiply-accumulates of products between tensors (``q @ k^T``, ``attn @ v``, ``einsum``,
scaled dot-product attention, ``F.linear`` called outside a layer, a recurrent layer's fused
call), which no layer hook sees.

An attention block's two products grow with tokens squared: left out, a FLOPs budget on a
transformer is a share of its layers' FLOPs, not of the model's. The formulas here are the
one place both sides use: the tracer writes them as cost terms of the channels involved, and
``measure_cost`` counts every such call it sees run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def matmul_macs(left: Sequence[int], right: Sequence[int], result: Sequence[int]) -> int:
    """``left @ right``: each result value sums over the contracted axis (``left``'s last)."""
    return math.prod(result) * left[-1]


def einsum_macs(equation: str, shapes: Sequence[Sequence[int]]) -> int:
    """One multiply-accumulate per combination of every letter's values (two operands)."""
    sizes: dict[str, int] = {}
    for letters, shape in zip(equation.replace(" ", "").split("->")[0].split(","), shapes):
        sizes.update(zip(letters, shape))
    return math.prod(sizes.values())


def attention_macs(query: Sequence[int], key: Sequence[int], value: Sequence[int]) -> int:
    """``softmax(q @ k^T) @ v``: tokens x keys x (query features + value features) per head."""
    leading = math.prod(query[:-2])
    return leading * query[-2] * key[-2] * (query[-1] + value[-1])


def multi_head_attention_macs(
    query: Sequence[int], key: Sequence[int], value: Sequence[int], embed_dim: int, out_features: int
) -> int:
    """``F.multi_head_attention_forward`` on (tokens, batch, features) inputs: the q, k and v
    projections to ``embed_dim``, the two products over all heads, the output projection."""
    batch = query[1] if len(query) == 3 else 1
    tokens, keys = query[0], key[0]
    projections = tokens * query[-1] + keys * key[-1] + keys * value[-1]
    return batch * embed_dim * (projections + 2 * tokens * keys + tokens * out_features)


def recurrent_macs(tokens: int, weight_shapes: Sequence[Sequence[int]]) -> int:
    """An RNN, GRU or LSTM (any layers, directions, projection): each weight matrix multiplies
    one vector per token, per layer and direction, each of which has its own matrices."""
    return tokens * sum(math.prod(shape) for shape in weight_shapes if len(shape) == 2)


def _shapes(*tensors: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in tensors]


_MATMULS: set[Callable[..., Any]] = {
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.bmm,
    torch.Tensor.bmm,
    torch.mm,
    torch.Tensor.mm,
}


_RECURRENT: set[Callable[..., Any]] = {torch.lstm, torch.gru, torch.rnn_tanh, torch.rnn_relu}


class ProductCounter(TorchFunctionMode):
    """Counts the MACs of every product between tensors run under it, except inside a layer
    whose own MACs are counted already (``inside`` > 0, kept by that layer's hooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0
        self.inside = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.inside == 0:
            self.macs += _product_macs(func, args, kwargs, result)
        return result


def _product_macs(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> int:
    if func is F.linear:  # called on its own (a layer's forward is counted by its hook): Swin's attention
        weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
        return result.numel() * weight.shape[-1] if torch.is_tensor(weight) else 0
    if func in _MATMULS and len(args) == 2 and all(torch.is_tensor(a) and a.dim() >= 2 for a in args):
        return matmul_macs(args[0].shape, args[1].shape, result.shape)
    if func is torch.einsum and args and isinstance(args[0], str):
        operands = args[1] if len(args) == 2 and isinstance(args[1], list | tuple) else args[1:]
        return einsum_macs(args[0], _shapes(*operands)) if len(operands) == 2 else 0
    if func is F.multi_head_attention_forward:  # nn.MultiheadAttention (its fused path is off under this mode)
        query, key, value, embed_dim = args[:4]
        out_weight = kwargs.get("out_proj_weight", args[11] if len(args) > 11 else None)
        out_features = out_weight.shape[0] if torch.is_tensor(out_weight) else embed_dim
        return multi_head_attention_macs(query.shape, key.shape, value.shape, embed_dim, out_features)
    if func in _RECURRENT:  # nn.LSTM / GRU / RNN's one fused call, whose matmuls no mode sees
        weights = next(a for a in args if isinstance(a, list))
        packed = torch.is_tensor(args[1]) and not args[1].is_floating_point()  # (data, batch_sizes, ...)
        tokens = args[0].shape[0] if packed else math.prod(args[0].shape[:-1])
        return recurrent_macs(tokens, _shapes(*weights))
    if func is F.scaled_dot_product_attention:
        query, key, value = (kwargs.get(k, a) for k, a in zip(("query", "key", "value"), args[:3]))
        return attention_macs(query.shape, key.shape, value.shape)
    return 0
