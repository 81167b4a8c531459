"""Rules for torchvision's own functions, registered when torchvision is imported
(``tracer/on_import.py``).

``stochastic_depth`` drops whole samples, so channels pass through it. Swin's attention and its
relative position bias (``shifted_window_attention``, ``_get_relative_position_bias``) tie the
channel count to sizes inside them: sealed. Swin's downsampling (``_patch_merging_pad``) puts
each 2x2 neighbourhood's four pixels side by side on the channel axis, the last: the channels
four times over, as a ``cat`` of four slices.
"""

from __future__ import annotations

from torchvision.models.swin_transformer import (
    _get_relative_position_bias,
    _patch_merging_pad,
    shifted_window_attention,
)
from torchvision.ops import stochastic_depth

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layout import Layout
from pat_ray.tracer.nodes import PRODUCT_MACS, shape_of
from pat_ray.tracer.ops.call import OpCall
from pat_ray.tracer.ops.elementwise import unary_layout
from pat_ray.tracer.ops.registry import op_rule
from pat_ray.tracer.state import GroupBuilder

op_rule("pass_torchvision", functions={stochastic_depth})(unary_layout)


@op_rule("sealed", functions={shifted_window_attention, _get_relative_position_bias})
def sealed_layout(builder: GroupBuilder, call: OpCall) -> Layout:
    """A function whose channels pat_ray cannot follow inside: its traced inputs keep their
    width, so the products it runs cost the same after pruning (the parameters it is handed are
    counted at their size once tracing ends, like every parameter no rule counted)."""
    for layout in call.inputs:
        builder.pin(layout)
    builder.count_fixed_macs(call.node.name, call.node.meta.get(PRODUCT_MACS, 0))
    first = call.first_layout()
    if call.shape == shape_of(call.node.args[0]):
        return first
    return builder.fixed_channels(f"<{call.node.name}>", call.shape) or first


@op_rule("tile", functions={_patch_merging_pad})
def tiling_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    layout = call.first_layout()
    if layout.axis != len(call.shape) - 1 or layout.repeat != 1:
        raise UnsupportedModelError(f"{call.where}: its input's channels are not on the last axis")
    return Layout(layout.groups * 4, 1, layout.axis)
