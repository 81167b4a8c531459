"""``nn.LayerNorm``, and ``F.layer_norm`` called inside a LayerNorm subclass's forward
(torchvision's LayerNorm2d, which permutes NCHW around it).

Over the channels alone (``normalized_shape == (C,)`` on a channels-last tensor) it is pruned
with them: weight, bias and ``normalized_shape`` shrink. Pruning then changes the mean and
variance it normalizes with, so the pruned model is not the dense one with channels zeroed
(training goes on after pruning, as with any LayerNorm model). Over other axes only it is
per-channel and left alone; over channels *and* other axes, or in a module pat_ray cannot
resize, the channels are kept (pinned).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layers.family import Cut, LayerCall, LayerFamily, Rewrite, kept_indices, select
from pat_ray.tracer.layers.registry import layer_family
from pat_ray.tracer.layout import Layout
from pat_ray.tracer.nodes import arg, known_shape
from pat_ray.tracer.ops.call import OpCall
from pat_ray.tracer.ops.registry import op_rule
from pat_ray.tracer.state import GroupBuilder

LAYER_NORM_FUNCTIONS = {F.layer_norm}


@layer_family(nn.LayerNorm)
class LayerNorm(LayerFamily):
    timed = True

    def trace(self, call: LayerCall) -> Layout:
        module = call.module
        assert isinstance(module, nn.LayerNorm)
        params = [f"{call.name}.{p}" for p, t in (("weight", module.weight), ("bias", module.bias)) if t is not None]
        return layer_norm_layout(
            call.builder, call.name, params, call.layout, call.in_shape, module.normalized_shape, call.where
        )

    def shrink(self, module: nn.Module, cut: Cut, rewrite: Rewrite) -> None:
        assert isinstance(module, nn.LayerNorm)
        keep = kept_indices(module.normalized_shape[0], cut.drop_out)
        for name in ("weight", "bias"):
            rewrite(module, name, select(0, keep))
        module.normalized_shape = (len(keep),)

    def rebuilt(self, module: nn.Module, n_in: int, n_out: int) -> nn.Module:
        assert isinstance(module, nn.LayerNorm)
        built: nn.Module = type(module)(n_out, eps=module.eps, elementwise_affine=module.elementwise_affine)
        return built

    def timing_key(self, module: nn.Module, n_in: int, n_out: int) -> tuple[Hashable, ...]:
        assert isinstance(module, nn.LayerNorm)
        return (type(module).__name__, module.elementwise_affine, n_out)

    def input_follows_output(self, module: nn.Module) -> bool:
        return True

    def reads_last_axis(self, module: nn.Module, shape: tuple[int, ...]) -> bool:
        """A plain LayerNorm does; a subclass such as LayerNorm2d permutes NCHW itself."""
        return type(module).forward is nn.LayerNorm.forward


@op_rule("layer_norm", functions=LAYER_NORM_FUNCTIONS)
def functional_layer_norm(builder: GroupBuilder, call: OpCall) -> Layout:
    """``F.layer_norm(x, shape, weight, bias)``: the module owning ``weight`` is the one to resize."""
    node, layout = call.node, call.first_layout()
    weight, bias = arg(node, 2, "weight"), arg(node, 3, "bias")
    params = [str(a.target) for a in (weight, bias) if isinstance(a, fx.Node) and a.op == "get_attr"]
    owner = params[0].rpartition(".")[0] if params else None
    if owner is not None and not isinstance(builder.model.get_submodule(owner), nn.LayerNorm):
        owner = None  # its normalized_shape lives in code pat_ray cannot change
    in_shape = known_shape(node.args[0], call.where)
    normalized = arg(node, 1, "normalized_shape")
    return layer_norm_layout(builder, owner, params, layout, in_shape, normalized, call.where)


def layer_norm_layout(
    builder: GroupBuilder,
    owner: str | None,
    params: list[str],
    layout: Layout,
    in_shape: tuple[int, ...],
    normalized_shape: Any,
    where: str,
) -> Layout:
    """A LayerNorm's step: ``owner`` names the nn.LayerNorm to resize (None: none can be),
    ``params`` its weight / bias."""
    normalized = tuple(normalized_shape) if isinstance(normalized_shape, list | tuple) else None
    if normalized is None:
        raise UnsupportedModelError(f"{where}: normalized_shape {normalized_shape!r} is not a constant")
    per_channel = normalized == (builder.width(layout),) and layout.repeat == 1 and layout.axis == len(in_shape) - 1
    if per_channel and owner is not None:
        builder.add_norm(owner, layout, len(params))
        return layout
    for param in params:
        builder.count_fixed(param)
    if layout.axis >= len(in_shape) - len(normalized):
        builder.pin(layout)  # normalizes the channels together with other axes, or cannot be resized
    return layout
