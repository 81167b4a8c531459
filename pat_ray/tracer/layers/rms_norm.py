"""``nn.RMSNorm`` (LLaMA-style, and ConvNeXt / ViT variants): a LayerNorm without the mean and
without a bias. Over the channels alone (``normalized_shape == (C,)`` on a channels-last
tensor) it prunes with them: its weight and ``normalized_shape`` shrink, and the root mean
square it divides by is then taken over the kept channels (as a LayerNorm's statistics are).
Over other axes, or channels together with other axes, it is handled as a LayerNorm is.
"""

from __future__ import annotations

from collections.abc import Hashable

from torch import nn

from pat_ray.tracer.layers.family import Cut, LayerCall, LayerFamily, Rewrite, kept_indices, select
from pat_ray.tracer.layers.layer_norm import layer_norm_layout
from pat_ray.tracer.layers.registry import layer_family
from pat_ray.tracer.layout import Layout


@layer_family(nn.RMSNorm)
class RMSNorm(LayerFamily):
    timed = True

    def trace(self, call: LayerCall) -> Layout:
        module = call.module
        assert isinstance(module, nn.RMSNorm)
        params = [f"{call.name}.weight"] if module.weight is not None else []
        return layer_norm_layout(
            call.builder, call.name, params, call.layout, call.in_shape, module.normalized_shape, call.where
        )

    def shrink(self, module: nn.Module, cut: Cut, rewrite: Rewrite) -> None:
        assert isinstance(module, nn.RMSNorm)
        keep = kept_indices(module.normalized_shape[0], cut.drop_out)
        rewrite(module, "weight", select(0, keep))
        module.normalized_shape = (len(keep),)

    def rebuilt(self, module: nn.Module, n_in: int, n_out: int) -> nn.Module:
        assert isinstance(module, nn.RMSNorm)
        return nn.RMSNorm(n_out, eps=module.eps, elementwise_affine=module.elementwise_affine)

    def timing_key(self, module: nn.Module, n_in: int, n_out: int) -> tuple[Hashable, ...]:
        assert isinstance(module, nn.RMSNorm)
        return ("RMSNorm", module.elementwise_affine, n_out)

    def input_follows_output(self, module: nn.Module) -> bool:
        return True

    def reads_last_axis(self, module: nn.Module, shape: tuple[int, ...]) -> bool:
        return type(module).forward is nn.RMSNorm.forward
