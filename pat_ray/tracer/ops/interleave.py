"""``repeat_interleave``: each element repeated ``r`` times in place along one dim (GCViT's
window attention, up-sampling by copying). Along another axis than the channels' the
channels stay where they are; along the channel axis channel c fills positions ``c*r ...
c*r + r - 1``, which is the layout's ``repeat`` (as after a flatten), so the layers that read
the result cut ``r`` positions per removed channel. Repeats given as a tensor (a different
count per element) or no dim (the tensor flattened first) are refused.
"""

from __future__ import annotations

import torch

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layout import Layout
from pat_ray.tracer.nodes import arg, int_arg, known_shape
from pat_ray.tracer.ops.call import OpCall
from pat_ray.tracer.ops.registry import op_rule
from pat_ray.tracer.state import GroupBuilder

INTERLEAVE_FUNCTIONS = {torch.repeat_interleave}
INTERLEAVE_METHODS = {"repeat_interleave"}


@op_rule("interleave", functions=INTERLEAVE_FUNCTIONS, methods=INTERLEAVE_METHODS)
def interleave_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    node, layout, where = call.node, call.first_layout(), call.where
    repeats, dim = arg(node, 1, "repeats"), arg(node, 2, "dim")
    if dim is None:
        raise UnsupportedModelError(f"{where}: repeat_interleave without a dim flattens the tensor first")
    axis = int_arg(dim, where) % len(known_shape(node.args[0], where))
    if axis != layout.axis:
        return layout
    if not isinstance(repeats, int):
        raise UnsupportedModelError(f"{where}: repeats the channels by counts known only at run time ({repeats!r})")
    return Layout(layout.groups, layout.repeat * repeats, layout.axis)
