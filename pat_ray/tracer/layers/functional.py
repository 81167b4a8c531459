"""``F.conv2d`` / ``F.linear`` called inside a layer's own ``forward`` with a weight computed
from that layer's parameters: weight standardization (BiT's and NFNet's ``StdConv2d``: each
filter normalized by its mean and std), a learned per-filter gain. The call is traced as the
layer itself (surgery cuts the layer's weight and bias; the weight is computed again from
them at each call); the layer's other per-filter parameters are cut with its outputs. An
``F.linear`` whose weight and bias are fixed (buffers, no parameter: a DCT) is the matrix
product it computes. Anything else feeding the weight (another layer's parameter, a traced
activation) is refused.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layers.table import trace_layer
from pat_ray.tracer.layout import Layout
from pat_ray.tracer.nodes import arg, computed_from, is_parameter, target_name
from pat_ray.tracer.ops.call import OpCall
from pat_ray.tracer.ops.joins import CAT_FUNCTIONS
from pat_ray.tracer.ops.products import fixed_linear
from pat_ray.tracer.ops.registry import op_rule
from pat_ray.tracer.state import GroupBuilder

FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, F.linear}
_KIND = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d, "linear": nn.Linear}


@op_rule("layer", functions=FUNCTIONS)
def functional_layer(builder: GroupBuilder, call: OpCall) -> Layout | None:
    """The layout of ``F.conv*(x, weight, bias, ...)`` / ``F.linear(x, weight, bias)``."""
    node, layout, where = call.node, call.first_layout(), call.where
    kind = _KIND[target_name(node)]
    weight, bias = arg(node, 1, "weight"), arg(node, 2, "bias")
    if kind is nn.Linear and all(_fixed(builder, t) for t in (weight, bias)) and isinstance(weight, fx.Node):
        return fixed_linear(builder, call, weight)
    pieces = _bias_pieces(builder, bias)
    tensors = (weight,) if pieces else (weight, bias)
    owners = {_owner(n) for n in tensors if isinstance(n, fx.Node)}
    owner = next(iter(owners)) if len(owners) == 1 else None
    module = builder.model.get_submodule(owner) if owner is not None else None
    if owner is None or module is None or not isinstance(module, kind) or not _same_call(node, module):
        raise UnsupportedModelError(
            f"{where}: a bare {kind.__name__.lower()} whose weight is not made from one {kind.__name__} layer's "
            "own parameters (with its stride, padding and groups); pat_ray cannot tell which channels it cuts"
        )
    out = trace_layer(builder, node, layout, name=owner)
    if out is not None and pieces:
        _slice_bias_pieces(builder, out, pieces, where)
    width = module.get_parameter("weight").shape[0]  # out_channels / out_features
    for param, tensor in module.named_parameters(recurse=False):
        if param in ("weight", "bias"):
            continue
        if out is not None and tensor.dim() >= 1 and tensor.shape[0] == width and tensor.numel() != 1:
            builder.slice_param(f"{owner}.{param}", 0, out, where)  # a per-filter gain
        else:
            builder.count_fixed(f"{owner}.{param}")
    return out


def _bias_pieces(builder: GroupBuilder, bias: object) -> list[str]:
    """The parameters (or buffers) a bias is concatenated from at run time, in order (BEiT's
    ``torch.cat((self.q_bias, self.k_bias, self.v_bias))``); [] for any other bias."""
    if not isinstance(bias, fx.Node) or bias.op != "call_function" or bias.target not in CAT_FUNCTIONS:
        return []
    parts, dim = bias.args[0], arg(bias, 1, "dim", 0)
    if dim not in (0, -1) or not isinstance(parts, list | tuple):
        return []
    if not all(isinstance(p, fx.Node) and is_parameter(builder.model, p) for p in parts):
        return []
    return [str(p.target) for p in parts if isinstance(p, fx.Node)]


def _slice_bias_pieces(builder: GroupBuilder, out: Layout, pieces: list[str], where: str) -> None:
    """Each piece of the bias is cut with the outputs it is added to: the output channels are
    split where one piece ends and the next begins, each part slicing its piece."""
    parts = [builder.new_group(_length(builder.model, piece), f"<{piece}>", axis=out.axis) for piece in pieces]
    builder.unify(out, Layout(tuple(g for part in parts for g in part.groups), axis=out.axis), where)
    for piece, part in zip(pieces, parts):
        builder.slice_param(piece, 0, part, where)


def _length(model: nn.Module, target: str) -> int:
    """The length of a parameter or buffer given by its dotted name."""
    owner, _, name = target.rpartition(".")
    return int(getattr(model.get_submodule(owner), name).shape[0])


def _fixed(builder: GroupBuilder, tensor: object) -> bool:
    """Made from the model's buffers and constants only (or absent): no parameter, no input."""
    if not isinstance(tensor, fx.Node):
        return tensor is None
    return not any(
        n.op == "placeholder" or (n.op == "get_attr" and _learned(builder.model, str(n.target)))
        for n in computed_from(tensor)
    )


def _learned(model: nn.Module, target: str) -> bool:
    try:
        model.get_parameter(target)
    except AttributeError:
        return False
    return True


def _owner(tensor: fx.Node) -> str | None:
    """The one module whose parameters ``tensor`` is computed from, and from nothing else."""
    owners: set[str | None] = set()
    for n in computed_from(tensor):
        if n.op == "get_attr":
            owners.add(str(n.target).rpartition(".")[0])
        elif n.op == "placeholder":
            owners.add(None)  # made from the model's input: a dynamic filter
    return owners.pop() if len(owners) == 1 else None


def _same_call(node: fx.Node, module: nn.Module) -> bool:
    """The functional call applies the layer as the layer would (its groups, for a conv)."""
    if isinstance(module, nn.Linear):
        return True
    groups = arg(node, 6, "groups", 1)
    return bool(groups == getattr(module, "groups", None))
