"""``F.batch_norm`` / ``F.instance_norm`` / ``F.group_norm`` called inside a norm layer's own
``forward`` with that layer's own tensors: timm's ``BatchNormAct2d`` and its kin subclass
``nn.BatchNorm2d`` but run ``F.batch_norm(x, self.running_mean, ..., self.weight, self.bias)``
and their activation themselves; PoolFormer's ``GroupNorm1`` runs ``F.group_norm``. The call is
traced as the layer (its family cuts weight, bias and running statistics); a call fed by
another layer's tensors, or by tensors computed from them, is refused. A call with no tensors
but its input (``F.instance_norm(x)``) normalizes each channel by its own statistics, so the
channels pass; ``F.group_norm(x, g)`` alone keeps them (its groups are channel counts).
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layers.table import trace_layer
from pat_ray.tracer.layout import Layout
from pat_ray.tracer.nodes import arg, target_name
from pat_ray.tracer.ops.call import OpCall
from pat_ray.tracer.ops.registry import op_rule
from pat_ray.tracer.state import GroupBuilder

FUNCTIONS = {F.batch_norm, F.instance_norm, F.group_norm}
# per function: the positions of its tensors (weight and bias, and running statistics) and the layer class
_TENSORS = {
    "batch_norm": ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")),
    "instance_norm": ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")),
    "group_norm": ((2, "weight"), (3, "bias")),
}
_LAYER: dict[str, type[nn.Module]] = {"batch_norm": _NormBase, "instance_norm": _NormBase, "group_norm": nn.GroupNorm}


@op_rule("norm_call", functions=FUNCTIONS)
def functional_norm(builder: GroupBuilder, call: OpCall) -> Layout | None:
    node, layout, where = call.node, call.first_layout(), call.where
    name = target_name(node)
    tensors = [arg(node, position, keyword) for position, keyword in _TENSORS[name]]
    given = [t for t in tensors if t is not None]
    if not given:  # statistics of the input itself, no affine: nothing to cut
        if name == "group_norm":
            builder.pin(layout)  # its groups of C / G channels would change with the channel count
        return layout
    own = all(isinstance(t, fx.Node) and t.op == "get_attr" for t in given)
    owners = {str(t.target).rpartition(".")[0] for t in given if isinstance(t, fx.Node)}
    owner = owners.pop() if own and len(owners) == 1 else None
    module = builder.model.get_submodule(owner) if owner is not None else None
    if module is None or not isinstance(module, _LAYER[name]) or not _same_groups(node, name, module):
        raise UnsupportedModelError(
            f"{where}: a bare {name} whose weight, bias and statistics are not one norm layer's own tensors; "
            "pat_ray cannot tell which channels it normalizes"
        )
    return trace_layer(builder, node, layout, name=owner)


def _same_groups(node: fx.Node, name: str, module: nn.Module) -> bool:
    """A group norm must run with the layer's own group count (its family keeps the groups)."""
    return name != "group_norm" or arg(node, 1, "num_groups") == getattr(module, "num_groups", None)
