"""``nn.PReLU``: one slope per channel (sliced with the channels), or one slope for all."""

from __future__ import annotations

from torch import nn

from pat_ray.tracer.layers.family import LayerCall, LayerFamily
from pat_ray.tracer.layers.registry import layer_family
from pat_ray.tracer.layout import Layout


@layer_family(nn.PReLU)
class PReLU(LayerFamily):
    def trace(self, call: LayerCall) -> Layout:
        assert isinstance(call.module, nn.PReLU)
        weight = f"{call.name}.weight"
        if call.module.num_parameters == 1:
            call.builder.count_fixed(weight)
            return call.layout
        call.builder.slice_param(weight, 0, call.on_dim1(), call.where)
        return call.layout
